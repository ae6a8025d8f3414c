/* libcap: capability names and numbers, and reading a process's sets. */
#ifndef STOCKADE_CCAP_SHIM_H
#define STOCKADE_CCAP_SHIM_H
#include <sys/capability.h>
#endif
