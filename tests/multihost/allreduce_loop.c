/* The yardstick for `ddlab check`'s `mpi` bandwidth rows: a plain loop of out-of-place
 * MPI_Allreduce (float sum) after MPI_Init, timed as OSU's benchmarks time it and with the
 * counts of ddlab check's full sweep. For each size: fresh send and receive buffers,
 * written once; one warm-up call; then CALLS calls, each after a barrier and timed alone
 * with MPI_Wtime, CALLS = 64 MB / size within 5…200. A rank's figure is its median call;
 * the slowest rank's figure is reported. One line per size:
 *   BYTES TIME_US BUSBW_GBPS      (busbw = bytes / time · 2(N−1)/N, as nccl-tests)
 *
 *   mpicc -O2 -o allreduce_loop allreduce_loop.c
 *   mpirun -n 2 ./allreduce_loop BYTES...
 */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int cmp(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

int main(int argc, char **argv) {
  MPI_Init(&argc, &argv);
  int rank, n;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &n);
  if (argc < 2) {
    if (rank == 0) fprintf(stderr, "usage: allreduce_loop BYTES...\n");
    MPI_Abort(MPI_COMM_WORLD, 2);
  }
  for (int a = 1; a < argc; a++) {
    long bytes = atol(argv[a]);
    long len = bytes / 4 > 0 ? bytes / 4 : 1;
    long calls = (64L << 20) / (len * 4);
    calls = calls < 5 ? 5 : calls > 200 ? 200 : calls;
    float *send = malloc(len * sizeof(float)), *recv = malloc(len * sizeof(float));
    double *times = malloc(calls * sizeof(double));
    if (!send || !recv || !times) MPI_Abort(MPI_COMM_WORLD, 1);
    for (long i = 0; i < len; i++) send[i] = (float)((rank * 7 + i * 13) % 17) - 8.0f;
    memset(recv, 0, len * sizeof(float));
    for (long c = 0; c <= calls; c++) {
      MPI_Barrier(MPI_COMM_WORLD);
      double t0 = MPI_Wtime();
      MPI_Allreduce(send, recv, len, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
      if (c > 0) times[c - 1] = (MPI_Wtime() - t0) * 1e6;
    }
    qsort(times, calls, sizeof(double), cmp);
    double mine = times[calls / 2], slowest;
    MPI_Reduce(&mine, &slowest, 1, MPI_DOUBLE, MPI_MAX, 0, MPI_COMM_WORLD);
    if (rank == 0)
      printf("%ld %.3f %.4f\n", len * 4, slowest,
             (double)(len * 4) / (slowest * 1e-6) / 1e9 * 2.0 * (n - 1) / n);
    free(send);
    free(recv);
    free(times);
  }
  MPI_Finalize();
  return 0;
}
