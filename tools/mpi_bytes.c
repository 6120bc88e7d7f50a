/* A PMPI byte counter for validating tools/cost_model.py: LD_PRELOAD it into anyk and every rank
 * writes, at MPI_Finalize, what it handed to MPI_Alltoallv (the dispatcher's row exchanges),
 * MPI_Alltoall (the count exchanges) and MPI_Allreduce (gradient sync and statistics).
 *   mpicc -shared -fPIC -O2 -o /tmp/libmpibytes.so tools/mpi_bytes.c
 *   MPI_BYTES_OUT=/tmp/bytes mpirun -np 2 -x LD_PRELOAD=/tmp/libmpibytes.so -x MPI_BYTES_OUT build/anyk train ...
 * -> /tmp/bytes.<rank>.json. "a2av_bytes" counts every row sent (to itself included),
 * "a2av_off_rank_bytes" only rows for other ranks; allreduce bytes are the payload per call (what
 * the ring algorithm then moves is a model assumption, not counted here). Not part of anyk. */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>

static long long a2av_calls, a2av_bytes, a2av_off, a2a_calls, a2a_bytes, ar_calls, ar_bytes, ar_world_bytes;
static long long ar_small_calls, ar_small_bytes; /* payloads < 4 KiB (statistics, norms, flags) */

int MPI_Alltoallv(const void* sb, const int* sc, const int* sd, MPI_Datatype st, void* rb, const int* rc,
                  const int* rd, MPI_Datatype rt, MPI_Comm comm) {
  int size = 0, rank = 0, ts = 0;
  PMPI_Comm_size(comm, &size);
  PMPI_Comm_rank(comm, &rank);
  PMPI_Type_size(st, &ts);
  for (int i = 0; i < size; ++i) {
    a2av_bytes += (long long)sc[i] * ts;
    if (i != rank) a2av_off += (long long)sc[i] * ts;
  }
  ++a2av_calls;
  return PMPI_Alltoallv(sb, sc, sd, st, rb, rc, rd, rt, comm);
}

int MPI_Alltoall(const void* sb, int sc, MPI_Datatype st, void* rb, int rc, MPI_Datatype rt, MPI_Comm comm) {
  int size = 0, ts = 0;
  PMPI_Comm_size(comm, &size);
  PMPI_Type_size(st, &ts);
  a2a_bytes += (long long)sc * ts * size;
  ++a2a_calls;
  return PMPI_Alltoall(sb, sc, st, rb, rc, rt, comm);
}

int MPI_Allreduce(const void* sb, void* rb, int n, MPI_Datatype t, MPI_Op op, MPI_Comm comm) {
  int ts = 0, size = 0, wsize = 0;
  PMPI_Type_size(t, &ts);
  PMPI_Comm_size(comm, &size);
  PMPI_Comm_size(MPI_COMM_WORLD, &wsize);
  long long b = (long long)n * ts;
  if (size > 1) {
    if (b < 4096) {
      ++ar_small_calls;
      ar_small_bytes += b;
    } else {
      ++ar_calls;
      ar_bytes += b;
      if (size == wsize) ar_world_bytes += b;
    }
  }
  return PMPI_Allreduce(sb, rb, n, t, op, comm);
}

int MPI_Finalize(void) {
  const char* out = getenv("MPI_BYTES_OUT");
  if (out) {
    int rank = 0;
    PMPI_Comm_rank(MPI_COMM_WORLD, &rank);
    char path[4096];
    snprintf(path, sizeof path, "%s.%d.json", out, rank);
    FILE* f = fopen(path, "w");
    if (f) {
      fprintf(f,
              "{\"rank\": %d, \"a2av_calls\": %lld, \"a2av_bytes\": %lld, \"a2av_off_rank_bytes\": %lld, "
              "\"a2a_calls\": %lld, \"a2a_bytes\": %lld, \"allreduce_calls\": %lld, \"allreduce_bytes\": %lld, "
              "\"allreduce_world_bytes\": %lld, \"allreduce_small_calls\": %lld, \"allreduce_small_bytes\": %lld}\n",
              rank, a2av_calls, a2av_bytes, a2av_off, a2a_calls, a2a_bytes, ar_calls, ar_bytes, ar_world_bytes,
              ar_small_calls, ar_small_bytes);
      fclose(f);
    }
  }
  return PMPI_Finalize();
}
