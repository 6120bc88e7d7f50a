/* Ping-pong between world ranks 0 and 1: one-way time per message size, printed by rank 0 as
 * one JSON line {"bytes": [...], "one_way_s": [...], "min_s": [...]} (median and minimum of the
 * repetitions; on a busy machine the median holds scheduling delays, the minimum is the link). The link
 * constants of tools/cost_model.py's cluster preset (per-message latency, bandwidth) come from
 * this, measured on the link the study runs on, not from the study's own step times.
 *   mpicc -O2 -o /tmp/pingpong tools/mpi_pingpong.c
 *   srun --mpi=pmix -N 2 -n 2 /tmp/pingpong [REPS]        (REPS per size, default 20) */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>

static int cmp_double(const void* a, const void* b) {
  double x = *(const double*)a, y = *(const double*)b;
  return (x > y) - (x < y);
}

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  int rank, size;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  if (size < 2) {
    if (rank == 0) fprintf(stderr, "mpi_pingpong: needs 2 ranks (got %d)\n", size);
    MPI_Finalize();
    return 2;
  }
  const int reps = argc > 1 ? atoi(argv[1]) : 20;
  const long sizes[] = {8, 1024, 16384, 65536, 262144, 1048576, 4194304};
  const int nsizes = sizeof sizes / sizeof sizes[0];
  char* buf = calloc(sizes[nsizes - 1], 1);
  double* t = malloc(sizeof(double) * (reps > 0 ? reps : 1));
  if (rank == 0) printf("{\"bytes\": [");
  double med[16], lo[16];
  for (int s = 0; s < nsizes; ++s) {
    int n = (int)sizes[s];
    for (int r = -2; r < reps; ++r) { /* two warm-up rounds */
      MPI_Barrier(MPI_COMM_WORLD);
      double t0 = MPI_Wtime();
      if (rank == 0) {
        MPI_Send(buf, n, MPI_CHAR, 1, 0, MPI_COMM_WORLD);
        MPI_Recv(buf, n, MPI_CHAR, 1, 0, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
      } else if (rank == 1) {
        MPI_Recv(buf, n, MPI_CHAR, 0, 0, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
        MPI_Send(buf, n, MPI_CHAR, 0, 0, MPI_COMM_WORLD);
      }
      if (r >= 0) t[r] = (MPI_Wtime() - t0) / 2;
    }
    qsort(t, reps, sizeof(double), cmp_double);
    med[s] = t[reps / 2];
    lo[s] = t[0];
    if (rank == 0) printf("%s%ld", s ? ", " : "", sizes[s]);
  }
  if (rank == 0) {
    printf("], \"one_way_s\": [");
    for (int s = 0; s < nsizes; ++s) printf("%s%.9g", s ? ", " : "", med[s]);
    printf("], \"min_s\": [");
    for (int s = 0; s < nsizes; ++s) printf("%s%.9g", s ? ", " : "", lo[s]);
    printf("]}\n");
  }
  free(buf);
  free(t);
  MPI_Finalize();
  return 0;
}
