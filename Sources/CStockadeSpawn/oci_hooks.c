/*
 * The launcher's side of an OCI container's createRuntime and
 * createContainer hooks (see stk_plan.hooks_pause in stockade_spawn.h).
 *
 * Joining a mount namespace needs a single-threaded caller, and the
 * launcher is a multithreaded Swift process: each function forks, and the
 * child makes only system calls (no allocation, no locks) until it execs
 * or exits.
 */
#include "stockade_spawn.h"

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <sched.h>
#include <signal.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <linux/openat2.h>

#ifndef SYS_openat2
#define SYS_openat2 437
#endif
#ifndef SYS_open_tree
#define SYS_open_tree 428
#define SYS_move_mount 429
#endif
#ifndef SYS_close_range
#define SYS_close_range 436
#endif
#define STK_OPEN_TREE_CLONE 1
#define STK_AT_RECURSIVE 0x8000
#define STK_MOVE_MOUNT_F_EMPTY_PATH 0x4
#define STK_MOVE_MOUNT_T_EMPTY_PATH 0x40
#define STK_CLOSE_RANGE_CLOEXEC (1U << 2)

/* Opens the directory `path` without following any link (the rootfs's host
 * path, canonical) and checks it is the directory the launcher found there
 * (ESTALE otherwise): a bundle swapped after create began is refused. */
static int open_checked(const char *path, uint64_t dev, uint64_t ino) {
    struct open_how how;
    memset(&how, 0, sizeof how);
    how.flags = O_PATH | O_DIRECTORY | O_CLOEXEC;
    how.resolve = RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS;
    int fd = (int)syscall(SYS_openat2, AT_FDCWD, path, &how, sizeof how);
    if (fd < 0) return -1;
    struct stat st;
    if (fstat(fd, &st) < 0 || (uint64_t)st.st_dev != dev || (uint64_t)st.st_ino != ino) {
        close(fd);
        errno = ESTALE;
        return -1;
    }
    return fd;
}

/* Makes the tree at cwd the namespace's root and detaches the old root
 * (stacked on top by pivot_root(".", ".")). pivot_root moves the root and
 * working directory of every process of the namespace that had the old
 * root as theirs: the paused child's among them. */
static int pivot_here(void) {
    if (syscall(SYS_pivot_root, ".", ".") < 0) return -1;
    return umount2(".", MNT_DETACH);
}

/* The helper's body; returns 0 or -1 with errno. */
static int root_step(int mnt_fd, int step, const char *rootfs, uint64_t dev, uint64_t ino) {
    /* Our root and working directory become the namespace's root: the
     * child's staging root (step 1), the host's tree (step 2). */
    if (setns(mnt_fd, CLONE_NEWNS) < 0) return -1;
    if (step == 1) {
        /* The rootfs's host path below the staging root's view of the host. */
        char path[4096];
        size_t n = strlen(rootfs);
        if (n + sizeof "/oldroot" > sizeof path) {
            errno = ENAMETOOLONG;
            return -1;
        }
        memcpy(path, "/oldroot", 8);
        memcpy(path + 8, rootfs, n + 1);
        int target = open_checked(path, dev, ino);
        if (target < 0) return -1;
        /* A copy of the container's whole tree (its mounts too): the
         * container's root from here on. */
        int tree = (int)syscall(SYS_open_tree, AT_FDCWD, "/newroot", STK_OPEN_TREE_CLONE | O_CLOEXEC | STK_AT_RECURSIVE);
        if (tree < 0) return -1;
        if (syscall(SYS_move_mount, tree, "", target, "", STK_MOVE_MOUNT_F_EMPTY_PATH | STK_MOVE_MOUNT_T_EMPTY_PATH) < 0)
            return -1;
        /* The host's tree becomes the root, the staging root goes. */
        if (chdir("/oldroot") < 0) return -1;
        return pivot_here();
    }
    if (step == 2) {
        int root = open_checked(rootfs, dev, ino);
        if (root < 0 || fchdir(root) < 0) return -1;
        return pivot_here();
    }
    errno = EINVAL;
    return -1;
}

int stk_oci_hooks_root(int mnt_fd, int step, const char *rootfs, uint64_t dev, uint64_t ino) {
    pid_t pid = fork();
    if (pid < 0) return -errno;
    if (pid == 0) _exit(root_step(mnt_fd, step, rootfs, dev, ino) == 0 ? 0 : (errno & 0xff));
    int status = 0;
    while (waitpid(pid, &status, 0) < 0)
        if (errno != EINTR) return -errno;
    if (WIFEXITED(status) && WEXITSTATUS(status) == 0) return 0;
    return WIFEXITED(status) ? -WEXITSTATUS(status) : -EINTR;
}

/* The hook's process: namespaces, ids, stdio, then execve. Never returns. */
__attribute__((noreturn)) static void hook_child(const int *ns_fds, const int *ns_types, int n, const char *cwd,
                                                 uint64_t dev, uint64_t ino, int stdin_fd, int go_fd, const char *path,
                                                 char *const *argv, char *const *envp) {
    /* Nothing runs until the launcher has placed us in the container's cgroup. */
    if (go_fd >= 0) {
        char go = 0;
        ssize_t got;
        do got = read(go_fd, &go, 1);
        while (got < 0 && errno == EINTR);
        if (got != 1) _exit(126);
    }
    /* Dies with the launcher (which kills it on timeout); the launcher's
     * blocked signals and its ignored SIGPIPE are not the hook's. */
    prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0);
    signal(SIGPIPE, SIG_DFL);
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    if (dup2(stdin_fd, 0) < 0) _exit(126);
    /* No host group of the launcher's goes along into the container. */
    if (syscall(SYS_setgroups, 0, NULL) < 0) _exit(126);
    /* The mount namespace first, as the launcher: the container's root at
     * its host path may lie below directories only host root may search. */
    if (n < 1 || ns_types[0] != CLONE_NEWNS || setns(ns_fds[0], CLONE_NEWNS) < 0) _exit(126);
    int dir = open_checked(cwd, dev, ino);
    if (dir < 0 || fchdir(dir) < 0) _exit(126);
    close(dir);
    int user = -1, joins_pid = 0;
    for (int i = 1; i < n; i++) {
        if (ns_types[i] == CLONE_NEWUSER) {
            user = ns_fds[i];
            continue;
        }
        if (setns(ns_fds[i], ns_types[i]) < 0) _exit(126);
        if (ns_types[i] == CLONE_NEWPID) joins_pid = 1;
    }
    /* The user namespace last, then its root: the hook runs as the
     * container's root, with no privilege over the host. */
    if (user >= 0) {
        if (setns(user, CLONE_NEWUSER) < 0) _exit(126);
        if (syscall(SYS_setresgid, 0, 0, 0) < 0 || syscall(SYS_setresuid, 0, 0, 0) < 0) _exit(126);
    }
    /* No fd of the launcher's but stdio reaches the hook. */
    if (syscall(SYS_close_range, 3, ~0U, STK_CLOSE_RANGE_CLOEXEC) < 0)
        for (int fd = 3; fd < 4096; fd++) fcntl(fd, F_SETFD, FD_CLOEXEC);
    if (joins_pid) {
        /* setns(CLONE_NEWPID) places only our children: the hook is one,
         * and we pass its end on as ours. */
        pid_t hook = fork();
        if (hook < 0) _exit(126);
        if (hook > 0) {
            int status = 0;
            while (waitpid(hook, &status, 0) < 0)
                if (errno != EINTR) _exit(126);
            _exit(WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status));
        }
        prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0);
    }
    execve(path, argv, envp);
    _exit(errno == ENOENT ? 127 : 126);
}

int stk_oci_spawn_hook(const int *ns_fds, const int *ns_types, int n, const char *cwd, uint64_t dev, uint64_t ino,
                       int stdin_fd, int go_fd, const char *path, char *const *argv, char *const *envp) {
    pid_t pid = fork();
    if (pid < 0) return -errno;
    if (pid == 0) hook_child(ns_fds, ns_types, n, cwd, dev, ino, stdin_fd, go_fd, path, argv, envp);
    return pid;
}
