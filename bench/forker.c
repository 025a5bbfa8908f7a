/* A fork storm at full rate that keeps its own ground truth (bench/storm.py builds and runs it).
 *
 *   forker exit|exec SECONDS OUT
 *
 * Forks children as fast as it can for SECONDS. In `exit` mode each child calls _exit(n % 200)
 * (n = its index, so exit codes vary); in `exec` mode it execs /bin/true. Before reaping a
 * child the parent reads the zombie's /proc/<pid>/stat (field 22, start ticks: a zombie keeps
 * its stat, and its pid cannot be reused before the reap), so every life is known exactly as
 * lifewatch must know it. Writes one line per life to OUT: "pid start_ticks exit_code".
 *
 * Written in C so that the workload, not an interpreter, sets the rate (a Python loop forks
 * at ~500 lives/s on this VM; this forks at several thousand).
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

struct life { int pid; unsigned long long ticks; int code; };

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* Field 22 of a stat line; comm (field 2) may hold spaces and ')': split at the last ')'. */
static unsigned long long start_ticks(int pid) {
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%d/stat", pid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return 0;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0) return 0;
    buf[n] = 0;
    char *p = strrchr(buf, ')');
    if (!p) return 0;
    p += 2; /* field 3 starts here */
    for (int field = 3; field < 22 && p; field++) {
        p = strchr(p, ' ');
        if (p) p++;
    }
    return p ? strtoull(p, NULL, 10) : 0;
}

int main(int argc, char **argv) {
    if (argc != 4 || (strcmp(argv[1], "exit") && strcmp(argv[1], "exec"))) {
        fprintf(stderr, "usage: forker exit|exec SECONDS OUT\n");
        return 2;
    }
    int exec_mode = !strcmp(argv[1], "exec");
    double deadline = now() + atof(argv[2]);
    size_t cap = 1 << 16, len = 0;
    struct life *lives = malloc(cap * sizeof *lives);
    char *const true_argv[] = {"/bin/true", NULL};
    if (!lives) return 1;
    for (unsigned n = 0; now() < deadline; n++) {
        pid_t pid = fork();
        if (pid < 0) { perror("fork"); return 1; }
        if (pid == 0) {
            if (exec_mode) execv(true_argv[0], true_argv);
            _exit((int)(n % 200));
        }
        siginfo_t si;
        if (waitid(P_PID, pid, &si, WEXITED | WNOWAIT) < 0) { perror("waitid"); return 1; }
        unsigned long long ticks = start_ticks(pid);
        int status;
        if (waitpid(pid, &status, 0) < 0) { perror("waitpid"); return 1; }
        if (len == cap) {
            cap *= 2;
            lives = realloc(lives, cap * sizeof *lives);
            if (!lives) return 1;
        }
        lives[len++] = (struct life){pid, ticks, WIFEXITED(status) ? WEXITSTATUS(status) : -1};
    }
    FILE *out = fopen(argv[3], "w");
    if (!out) { perror(argv[3]); return 1; }
    for (size_t i = 0; i < len; i++)
        fprintf(out, "%d %llu %d\n", lives[i].pid, lives[i].ticks, lives[i].code);
    return fclose(out) ? 1 : 0;
}
