/* STREAM-style triad a[i] = b[i] + s*c[i] over arrays far larger than the caches, on OpenMP
 * threads (OMP_NUM_THREADS): the memory bandwidth the machine gives, printed in GB/s counting
 * 24 bytes per element (two reads and one write; write-allocate traffic not counted, as STREAM).
 * Build: gcc -O3 -march=native -fopenmp triad.c -o triad */
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>

#define N (1 << 25) /* 32 Mi doubles: 256 MiB an array */

int main(void) {
    double *a = malloc(sizeof(double) * N), *b = malloc(sizeof(double) * N), *c = malloc(sizeof(double) * N);
    if (!a || !b || !c) return 1;
#pragma omp parallel for schedule(static)
    for (long i = 0; i < N; i++) { a[i] = 0.0; b[i] = 1.0; c[i] = 2.0; }
    double best = 1e30;
    for (int rep = 0; rep < 10; rep++) {
        double t = omp_get_wtime();
#pragma omp parallel for schedule(static)
        for (long i = 0; i < N; i++) a[i] = b[i] + 3.0 * c[i];
        t = omp_get_wtime() - t;
        if (t < best) best = t;
    }
    if (a[N / 2] != 7.0) return 2;
    printf("%.1f\n", 24.0 * N / best / 1e9);
    return 0;
}
