/*
 * seccomp-compile: turns a simple rule list into a classic-BPF seccomp
 * program with libseccomp, for sandboxes that take a compiled filter on an
 * fd (bubblewrap's --seccomp FD). scripts/moby-seccomp-rules.py writes the
 * rule list from a Docker/Moby JSON profile.
 *
 * Input (stdin), one directive per line:
 *   default ACTION [ERRNO]
 *   arch NAME                    (x86_64, x86, x32)
 *   rule ACTION ERRNO SYSCALL [INDEX OP VALUE VALUE2]...
 * ACTION is a libseccomp SCMP_ACT_* name, OP a SCMP_CMP_* name.
 * Output (stdout): the BPF program, 8 bytes per instruction.
 * Unknown syscall names are skipped with a note on stderr, as runc does.
 */
#include <errno.h>
#include <seccomp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int parse_action(const char *name, long errnum, uint32_t *out)
{
    if (!strcmp(name, "SCMP_ACT_ALLOW")) *out = SCMP_ACT_ALLOW;
    else if (!strcmp(name, "SCMP_ACT_ERRNO")) *out = SCMP_ACT_ERRNO((uint16_t)errnum);
    else if (!strcmp(name, "SCMP_ACT_KILL") || !strcmp(name, "SCMP_ACT_KILL_THREAD")) *out = SCMP_ACT_KILL;
    else if (!strcmp(name, "SCMP_ACT_KILL_PROCESS")) *out = SCMP_ACT_KILL_PROCESS;
    else if (!strcmp(name, "SCMP_ACT_TRAP")) *out = SCMP_ACT_TRAP;
    else if (!strcmp(name, "SCMP_ACT_LOG")) *out = SCMP_ACT_LOG;
    else if (!strcmp(name, "SCMP_ACT_TRACE")) *out = SCMP_ACT_TRACE((uint16_t)errnum);
    else return -1;
    return 0;
}

static int parse_op(const char *name, enum scmp_compare *out)
{
    static const struct { const char *n; enum scmp_compare c; } ops[] = {
        {"SCMP_CMP_NE", SCMP_CMP_NE}, {"SCMP_CMP_LT", SCMP_CMP_LT}, {"SCMP_CMP_LE", SCMP_CMP_LE},
        {"SCMP_CMP_EQ", SCMP_CMP_EQ}, {"SCMP_CMP_GE", SCMP_CMP_GE}, {"SCMP_CMP_GT", SCMP_CMP_GT},
        {"SCMP_CMP_MASKED_EQ", SCMP_CMP_MASKED_EQ},
    };
    for (size_t i = 0; i < sizeof ops / sizeof *ops; i++)
        if (!strcmp(name, ops[i].n)) { *out = ops[i].c; return 0; }
    return -1;
}

int main(void)
{
    char line[4096];
    scmp_filter_ctx ctx = NULL;
    int lineno = 0, skipped = 0;
    while (fgets(line, sizeof line, stdin)) {
        lineno++;
        char *tok[64];
        int n = 0;
        for (char *t = strtok(line, " \t\n"); t && n < 64; t = strtok(NULL, " \t\n")) tok[n++] = t;
        if (n == 0 || tok[0][0] == '#') continue;
        if (!strcmp(tok[0], "default") && n >= 2) {
            uint32_t act;
            if (parse_action(tok[1], n > 2 ? atol(tok[2]) : EPERM, &act)) goto bad;
            ctx = seccomp_init(act);
            if (!ctx) { fprintf(stderr, "seccomp-compile: seccomp_init failed\n"); return 1; }
        } else if (!ctx) {
            fprintf(stderr, "seccomp-compile: line %d: 'default' must come first\n", lineno);
            return 1;
        } else if (!strcmp(tok[0], "arch") && n == 2) {
            uint32_t arch = seccomp_arch_resolve_name(tok[1]);
            if (!arch) goto bad;
            int r = seccomp_arch_add(ctx, arch);
            if (r && r != -EEXIST) { fprintf(stderr, "seccomp-compile: arch %s: %s\n", tok[1], strerror(-r)); return 1; }
        } else if (!strcmp(tok[0], "rule") && n >= 4 && (n - 4) % 4 == 0) {
            uint32_t act;
            if (parse_action(tok[1], atol(tok[2]), &act)) goto bad;
            int nr = seccomp_syscall_resolve_name(tok[3]);
            if (nr == __NR_SCMP_ERROR) { skipped++; continue; }
            struct scmp_arg_cmp cmp[6];
            int nc = 0;
            for (int i = 4; i + 3 < n && nc < 6; i += 4) {
                enum scmp_compare op;
                if (parse_op(tok[i + 1], &op)) goto bad;
                cmp[nc].arg = (unsigned)atoi(tok[i]);
                cmp[nc].op = op;
                cmp[nc].datum_a = strtoull(tok[i + 2], NULL, 0);
                cmp[nc].datum_b = strtoull(tok[i + 3], NULL, 0);
                nc++;
            }
            int r = seccomp_rule_add_array(ctx, act, nr, (unsigned)nc, cmp);
            if (r) { fprintf(stderr, "seccomp-compile: line %d: rule for %s: %s\n", lineno, tok[3], strerror(-r)); return 1; }
        } else {
            goto bad;
        }
        continue;
    bad:
        fprintf(stderr, "seccomp-compile: line %d: cannot read \"%s\"\n", lineno, tok[0]);
        return 1;
    }
    if (!ctx) { fprintf(stderr, "seccomp-compile: empty input\n"); return 1; }
    if (skipped) fprintf(stderr, "seccomp-compile: %d syscall names unknown to this libseccomp, skipped\n", skipped);
    int r = seccomp_export_bpf(ctx, 1);
    seccomp_release(ctx);
    if (r) { fprintf(stderr, "seccomp-compile: export: %s\n", strerror(-r)); return 1; }
    return 0;
}
