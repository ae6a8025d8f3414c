/* libseccomp, as the parent process uses it: compile a policy to BPF. */
#ifndef STOCKADE_CSECCOMP_SHIM_H
#define STOCKADE_CSECCOMP_SHIM_H
#include <seccomp.h>
#endif
