/* The latency probe: its first instruction reads CLOCK_MONOTONIC, then it appends the
 * nanoseconds to the file named by argv[1]. Built by bench/suite.py with the system's cc. */
#include <fcntl.h>
#include <stdio.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv) {
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    if (argc < 2) return 2;
    char line[32];
    int length = snprintf(line, sizeof line, "%lld\n",
                          (long long)now.tv_sec * 1000000000LL + now.tv_nsec);
    int fd = open(argv[1], O_WRONLY | O_APPEND | O_CREAT, 0644);
    if (fd < 0 || write(fd, line, length) != length) return 1;
    return close(fd);
}
