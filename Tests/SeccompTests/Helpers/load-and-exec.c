/*
 * load-and-exec: load a seccomp BPF program from a file, then exec.
 *
 *   load-and-exec FILTER_FILE PROG [ARG...]
 *
 * The file holds a raw `struct sock_filter` array (what SeccompProgram.bytes
 * holds). Sets no_new_privs, loads the filter with the raw seccomp()
 * system call, and execv()s PROG: the same last steps as the jail's child.
 * Exits 125 with a message when a step fails.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: load-and-exec FILTER_FILE PROG [ARG...]\n");
        return 2;
    }
    int fd = open(argv[1], O_RDONLY | O_CLOEXEC);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) < 0 || st.st_size <= 0 || st.st_size % 8 != 0 || st.st_size > 4096 * 8) {
        fprintf(stderr, "load-and-exec: %s: not a BPF program (%s)\n", argv[1], strerror(errno));
        return 125;
    }
    struct sock_filter *prog = malloc(st.st_size);
    if (!prog || read(fd, prog, st.st_size) != st.st_size) {
        fprintf(stderr, "load-and-exec: read %s: %s\n", argv[1], strerror(errno));
        return 125;
    }
    close(fd);
    struct sock_fprog fprog = { .len = (unsigned short)(st.st_size / 8), .filter = prog };
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0) {
        fprintf(stderr, "load-and-exec: no_new_privs: %s\n", strerror(errno));
        return 125;
    }
    if (syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &fprog) < 0) {
        fprintf(stderr, "load-and-exec: seccomp: %s\n", strerror(errno));
        return 125;
    }
    execv(argv[2], argv + 2);
    fprintf(stderr, "load-and-exec: exec %s: %s\n", argv[2], strerror(errno));
    return 125;
}
