#include "core/threads.h"

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

namespace hwaga {
namespace {

thread_local bool t_in_parallel = false;

class Pool {
 public:
  explicit Pool(int n) {
    for (int i = 1; i < n; ++i) workers_.emplace_back([this, i] { loop(i); });
  }
  ~Pool() {
    {
      std::lock_guard<std::mutex> lk(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    for (auto& t : workers_) t.join();
  }
  int size() const { return int(workers_.size()) + 1; }

  // Runs job(i) for i in [0, size()) with thread 0 being the caller.
  //
  // Hand-offs spin briefly before sleeping: a transformer step issues hundreds of small
  // parallel regions back to back, and a futex wake-up per region cost ~5% of a text-to-image
  // step. Workers poll `generation_` for up to kSpin iterations after finishing a job, and the
  // caller polls `pending_`, before either falls back to its condition variable (all state
  // changes still happen under mu_, so a sleeper is always woken).
  void run(const std::function<void(int)>& job) {
    {
      std::lock_guard<std::mutex> lk(mu_);
      job_ = &job;
      pending_.store(int(workers_.size()), std::memory_order_relaxed);
      generation_.fetch_add(1, std::memory_order_release);
    }
    cv_.notify_all();
    job(0);
    for (int i = 0; i < kSpin && pending_.load(std::memory_order_acquire) != 0; ++i) cpu_relax();
    std::unique_lock<std::mutex> lk(mu_);
    done_cv_.wait(lk, [this] { return pending_.load(std::memory_order_acquire) == 0; });
    job_ = nullptr;
  }

 private:
  static constexpr int kSpin = 2000;  // ~10-100 us of polling (a pause is 10-140 cycles)
  static void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
  }

  void loop(int idx) {
    uint64_t seen = 0;
    for (;;) {
      for (int i = 0; i < kSpin && generation_.load(std::memory_order_acquire) == seen; ++i) cpu_relax();
      const std::function<void(int)>* job;
      {
        std::unique_lock<std::mutex> lk(mu_);
        cv_.wait(lk, [&] { return stop_ || generation_.load(std::memory_order_relaxed) != seen; });
        if (stop_) return;
        seen = generation_.load(std::memory_order_relaxed);
        job = job_;
      }
      (*job)(idx);
      if (pending_.fetch_sub(1, std::memory_order_acq_rel) == 1) {
        std::lock_guard<std::mutex> lk(mu_);
        done_cv_.notify_one();
      }
    }
  }

  std::vector<std::thread> workers_;
  std::mutex mu_;
  std::condition_variable cv_, done_cv_;
  const std::function<void(int)>* job_ = nullptr;
  std::atomic<int> pending_{0};
  std::atomic<uint64_t> generation_{0};
  bool stop_ = false;
};

int g_threads = 0;
std::unique_ptr<Pool> g_pool;
std::mutex g_pool_mu;

int default_threads() {
  unsigned n = std::thread::hardware_concurrency();
  return n ? int(n) : 1;
}

Pool& pool() {
  if (!g_pool) g_pool = std::make_unique<Pool>(num_threads());
  return *g_pool;
}

}  // namespace

void set_num_threads(int n) {
  std::lock_guard<std::mutex> lk(g_pool_mu);
  g_threads = n > 0 ? n : default_threads();
  g_pool.reset();
}

int num_threads() { return g_threads > 0 ? g_threads : default_threads(); }

void parallel_for(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& fn) {
  if (n <= 0) return;
  grain = std::max<int64_t>(grain, 1);
  int64_t max_chunks = (n + grain - 1) / grain;
  int nt = int(std::min<int64_t>(num_threads(), max_chunks));
  if (nt <= 1 || t_in_parallel) {
    fn(0, n);
    return;
  }
  std::lock_guard<std::mutex> lk(g_pool_mu);  // one parallel region at a time
  Pool& p = pool();
  nt = std::min(nt, p.size());
  std::exception_ptr err;
  std::mutex err_mu;
  std::function<void(int)> job = [&](int idx) {
    if (idx >= nt) return;
    int64_t begin = n * idx / nt, end = n * (idx + 1) / nt;
    t_in_parallel = true;
    try {
      if (begin < end) fn(begin, end);
    } catch (...) {
      std::lock_guard<std::mutex> l(err_mu);
      if (!err) err = std::current_exception();
    }
    t_in_parallel = false;
  };
  p.run(job);
  if (err) std::rethrow_exception(err);
}

}  // namespace hwaga
