// A small persistent thread pool for the CPU reference ops. Work is split into a fixed set of contiguous
// chunks that depends only on the problem size and the chunk count, never on which thread runs a chunk, so
// every result is bit-identical whatever the number of threads.
#pragma once
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace fq::ref {

class ThreadPool {
 public:
  // n_threads <= 0 means std::thread::hardware_concurrency(). The calling thread is one of the workers,
  // so ThreadPool(1) starts no thread at all.
  explicit ThreadPool(int n_threads = 0);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int size() const { return n_threads_; }

  // Runs fn(task) for every task in [0, n_tasks), spread over the threads; returns when all are done.
  // An exception thrown by a task is rethrown here (the first one; the others are dropped).
  void run(int64_t n_tasks, const std::function<void(int64_t)>& fn);

  // Splits [0, n) into min(size(), ceil(n / min_chunk)) contiguous ranges and runs fn(begin, end) on each.
  void parallel_for(int64_t n, const std::function<void(int64_t, int64_t)>& fn, int64_t min_chunk = 1);

 private:
  void worker_loop();
  void drain();  // takes tasks of the current job until none are left

  int n_threads_ = 1;
  std::vector<std::thread> workers_;
  std::mutex mu_;
  std::condition_variable cv_work_, cv_done_;
  const std::function<void(int64_t)>* job_ = nullptr;
  int64_t n_tasks_ = 0, next_task_ = 0, tasks_done_ = 0;
  uint64_t generation_ = 0;
  bool stop_ = false;
  std::exception_ptr error_;
};

}  // namespace fq::ref
