// CPU pinning (and one stdio helper) for the benchmark's "server on one core, client on the other" rule: what
// `taskset -a -p -c CPU PID` does, one thread at a time. The cpu_set_t macros do not import into
// Swift, hence these two functions.

#define _GNU_SOURCE
#include "CRawBench.h"

#include <sched.h>
#include <unistd.h>

int rawbench_pin_thread(int tid, int cpu) {
#if defined(__linux__)
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    return sched_setaffinity(tid, sizeof(set), &set);
#else
    (void) tid;
    (void) cpu;
    return -1;
#endif
}

int rawbench_thread_cpu(int tid) {
#if defined(__linux__)
    cpu_set_t set;
    CPU_ZERO(&set);
    if (sched_getaffinity(tid, sizeof(set), &set) != 0 || CPU_COUNT(&set) != 1) {
        return -1;
    }
    for (int cpu = 0; cpu < CPU_SETSIZE; cpu++) {
        if (CPU_ISSET(cpu, &set)) {
            return cpu;
        }
    }
#else
    (void) tid;
#endif
    return -1;
}

int rawbench_online_cpus(void) {
    return (int) sysconf(_SC_NPROCESSORS_ONLN);
}

#include <stdio.h>

void rawbench_line_buffer_stdout(void) {
    setvbuf(stdout, NULL, _IOLBF, 0);
}
