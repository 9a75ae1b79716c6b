#include "train/data_parallel.h"

#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <thread>

#include "core/error.h"
#include "train/nccl_comm.h"
#include "train/train_ops.h"

namespace hwaga::train {

namespace {

constexpr char kMagic[8] = {'H', 'W', 'A', 'G', 'A', 'D', 'P', '1'};
constexpr double kGreetingTimeout = 10;  // seconds a new connection has to introduce itself

struct Hello {  // the first message of a rank to rank 0 (host byte order: same-architecture machines)
  char magic[8];
  int32_t rank;
  int32_t world;
  uint64_t fingerprint;
};

struct AddrInfo {
  addrinfo* ai = nullptr;
  ~AddrInfo() {
    if (ai) freeaddrinfo(ai);
  }
};

void resolve(const std::string& host, int port, bool passive, AddrInfo& out, const std::string& what) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  if (passive) hints.ai_flags = AI_PASSIVE;
  const std::string ps = std::to_string(port);
  const int rc = getaddrinfo(host.c_str(), ps.c_str(), &hints, &out.ai);
  if (rc != 0) fail(what, ": cannot resolve ", host, " (", gai_strerror(rc), ")");
}

void set_nodelay(int fd) {
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

}  // namespace

std::pair<std::string, int> parse_dist_addr(const std::string& s, const std::string& what) {
  const size_t colon = s.rfind(':');
  if (colon == std::string::npos || colon == 0 || colon + 1 == s.size())
    fail(what, " ", s, ": expected HOST:PORT (e.g. 127.0.0.1:29500)");
  std::string host = s.substr(0, colon);
  if (host.size() > 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
  int port = 0;
  for (size_t i = colon + 1; i < s.size(); ++i) {
    if (s[i] < '0' || s[i] > '9' || port > 65535) fail(what, " ", s, ": the port must be a number in 1..65535");
    port = port * 10 + (s[i] - '0');
  }
  if (port < 1 || port > 65535) fail(what, " ", s, ": the port must be a number in 1..65535");
  return {host, port};
}

DataParallel::DataParallel(const DataParallelOptions& opt, uint64_t fingerprint) : opt_(opt) {
  if (opt_.world < 1) fail("--world ", opt_.world, ": at least 1 rank");
  if (opt_.rank < 0 || opt_.rank >= opt_.world)
    fail("--rank ", opt_.rank, ": outside 0..", opt_.world - 1, " (--world ", opt_.world, ")");
  if (opt_.world == 1) return;
  if (!(opt_.timeout_s > 0)) fail("--dist-timeout must be positive, got ", opt_.timeout_s);
  const auto [host, port] = parse_dist_addr(opt_.addr, "--dist-addr");
  const double deadline = now_s() + opt_.timeout_s;

  if (leader()) {
    AddrInfo ai;
    resolve(host, port, true, ai, "--dist-addr");
    int lfd = -1;
    std::string why;
    for (addrinfo* a = ai.ai; a && lfd < 0; a = a->ai_next) {
      lfd = socket(a->ai_family, a->ai_socktype, a->ai_protocol);
      if (lfd < 0) continue;
      int one = 1;
      setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
      if (bind(lfd, a->ai_addr, a->ai_addrlen) != 0 || listen(lfd, opt_.world) != 0) {
        why = std::strerror(errno);
        close(lfd);
        lfd = -1;
      }
    }
    if (lfd < 0) fail("--dist-addr ", opt_.addr, ": rank 0 cannot listen there (", why, ")");
    struct Closer {
      int fd;
      ~Closer() { close(fd); }
    } closer{lfd};
    peers_.assign(size_t(opt_.world - 1), -1);
    for (int accepted = 0; accepted < opt_.world - 1;) {
      pollfd p{lfd, POLLIN, 0};
      const int rc = poll(&p, 1, 1000);
      if (rc < 0 && errno != EINTR) fail("data parallel: poll failed (", std::strerror(errno), ")");
      if (rc <= 0) {
        if (now_s() > deadline)
          fail("data parallel: rank 0 waited ", opt_.timeout_s, " s at ", opt_.addr, " for ranks; ", accepted, " of ",
               opt_.world - 1, " connected");
        continue;
      }
      const int fd = accept(lfd, nullptr, nullptr);
      if (fd < 0) continue;
      set_nodelay(fd);
      Hello h{};
      try {
        recv_all(fd, &h, sizeof h, -1, kGreetingTimeout);
      } catch (const Error&) {
        close(fd);  // not a rank (a port scan, a closed or silent connection): keep waiting
        continue;
      }
      std::string refusal;
      if (std::memcmp(h.magic, kMagic, sizeof kMagic) != 0)
        refusal = "not a hwaga data-parallel rank (bad greeting)";
      else if (h.world != opt_.world)
        refusal = "--world " + std::to_string(h.world) + " differs from rank 0's " + std::to_string(opt_.world);
      else if (h.rank < 1 || h.rank >= opt_.world)
        refusal = "--rank " + std::to_string(h.rank) + " is not one of 1.." + std::to_string(opt_.world - 1);
      else if (peers_[size_t(h.rank - 1)] >= 0)
        refusal = "two processes claim --rank " + std::to_string(h.rank);
      else if (h.fingerprint != fingerprint)
        refusal = "the run's settings (options, data, model) differ from rank 0's; start every rank with the same "
                  "command apart from --rank";
      const uint32_t status = refusal.empty() ? 0 : 1, len = uint32_t(refusal.size());
      if (!refusal.empty()) {
        try {
          send_all(fd, &status, sizeof status, h.rank);
          send_all(fd, &len, sizeof len, h.rank);
          send_all(fd, refusal.data(), refusal.size(), h.rank);
        } catch (const Error&) {
        }
        close(fd);
        if (std::memcmp(h.magic, kMagic, sizeof kMagic) != 0) continue;
        for (int f : peers_)
          if (f >= 0) close(f);
        peers_.clear();
        fail("data parallel: refused rank ", h.rank, ": ", refusal);
      }
      peers_[size_t(h.rank - 1)] = fd;
      ++accepted;
    }
    const uint32_t ok = 0, zero = 0;
    for (int r = 1; r < opt_.world; ++r) {
      send_all(peers_[size_t(r - 1)], &ok, sizeof ok, r);
      send_all(peers_[size_t(r - 1)], &zero, sizeof zero, r);
    }
    return;
  }

  // ranks 1..W-1: connect to rank 0, retrying while it starts
  int fd = -1;
  std::string why;
  while (fd < 0) {
    AddrInfo ai;
    resolve(host, port, false, ai, "--dist-addr");
    for (addrinfo* a = ai.ai; a && fd < 0; a = a->ai_next) {
      fd = socket(a->ai_family, a->ai_socktype, a->ai_protocol);
      if (fd < 0) continue;
      if (connect(fd, a->ai_addr, a->ai_addrlen) != 0) {
        why = std::strerror(errno);
        close(fd);
        fd = -1;
      }
    }
    if (fd >= 0) break;
    if (now_s() > deadline)
      fail("data parallel: rank ", opt_.rank, " could not reach rank 0 at ", opt_.addr, " within ", opt_.timeout_s,
           " s (", why, ")");
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  set_nodelay(fd);
  peers_ = {fd};
  Hello h{};
  std::memcpy(h.magic, kMagic, sizeof kMagic);
  h.rank = opt_.rank;
  h.world = opt_.world;
  h.fingerprint = fingerprint;
  send_all(fd, &h, sizeof h, 0);
  uint32_t status = 0, len = 0;
  recv_all(fd, &status, sizeof status, 0);
  recv_all(fd, &len, sizeof len, 0);
  std::string msg(std::min<uint32_t>(len, 4096), '\0');
  if (!msg.empty()) recv_all(fd, msg.data(), msg.size(), 0);
  if (status != 0) fail("data parallel: rank 0 (", opt_.addr, ") refused rank ", opt_.rank, ": ", msg);
}

DataParallel::~DataParallel() {
  for (int fd : peers_)
    if (fd >= 0) close(fd);
}

void DataParallel::wait_fd(int fd, short events, int peer, double timeout_s) {
  const double limit = timeout_s < 0 ? opt_.timeout_s : timeout_s;
  const double deadline = now_s() + limit;
  for (;;) {
    pollfd p{fd, events, 0};
    const int rc = poll(&p, 1, 1000);
    if (rc > 0) return;  // ready, or an error/hang-up the next read/write reports
    if (rc < 0 && errno != EINTR) fail("data parallel: poll failed (", std::strerror(errno), ")");
    if (now_s() > deadline)
      fail("data parallel: rank ", peer, " did not answer within ", limit, " s (--dist-timeout)");
  }
}

void DataParallel::send_all(int fd, const void* p, size_t n, int peer, double timeout_s) {
  const char* c = static_cast<const char*>(p);
  while (n > 0) {
    wait_fd(fd, POLLOUT, peer, timeout_s);
    const ssize_t k = send(fd, c, n, MSG_NOSIGNAL);
    if (k < 0 && (errno == EINTR || errno == EAGAIN)) continue;
    if (k <= 0) fail("data parallel: rank ", peer, " is gone (send: ", std::strerror(errno), ")");
    c += k;
    n -= size_t(k);
  }
}

void DataParallel::recv_all(int fd, void* p, size_t n, int peer, double timeout_s) {
  char* c = static_cast<char*>(p);
  while (n > 0) {
    wait_fd(fd, POLLIN, peer, timeout_s);
    const ssize_t k = recv(fd, c, n, 0);
    if (k < 0 && (errno == EINTR || errno == EAGAIN)) continue;
    if (k == 0) fail("data parallel: rank ", peer, " closed its connection (it stopped or failed)");
    if (k < 0) fail("data parallel: rank ", peer, " is gone (recv: ", std::strerror(errno), ")");
    c += k;
    n -= size_t(k);
  }
}

template <class T>
void DataParallel::reduce_impl(T* x, int64_t n) {
  if (opt_.world == 1 || n == 0) return;
  const size_t bytes = size_t(n) * sizeof(T);
  if (leader()) {
    scratch_.resize(bytes);
    const T* s = reinterpret_cast<const T*>(scratch_.data());
    for (int r = 1; r < opt_.world; ++r) {  // rank order: the same sum on every run
      recv_all(peers_[size_t(r - 1)], scratch_.data(), bytes, r);
      for (int64_t i = 0; i < n; ++i) x[i] += s[i];
    }
    for (int r = 1; r < opt_.world; ++r) send_all(peers_[size_t(r - 1)], x, bytes, r);
  } else {
    send_all(peers_[0], x, bytes, 0);
    recv_all(peers_[0], x, bytes, 0);
  }
}

void DataParallel::all_reduce_sum(float* x, int64_t n) { reduce_impl(x, n); }
void DataParallel::all_reduce_sum(double* x, int64_t n) { reduce_impl(x, n); }

void DataParallel::all_reduce_grads(ParamSet& ps, float scale, double* extra, int64_t n_extra) {
  if (opt_.world == 1) return;
  if (nccl_) {  // on the GPUs, in place; the extras over TCP
    std::vector<std::pair<float*, int64_t>> bufs;
    for (auto& p : ps.all())
      if (p->grad.defined()) bufs.push_back({p->g(), p->numel()});
    nccl_->all_reduce_sum(bufs);
    if (scale != 1.0f)
      for (auto& [g, n] : bufs) ps.ops().scale(g, scale, n);
    if (n_extra > 0) reduce_impl(extra, n_extra);
    return;
  }
  int64_t total = 0;
  for (auto& p : ps.all())
    if (p->grad.defined()) total += p->numel();
  grads_.resize(size_t(total));
  TrainOps& ops = ps.ops();  // gradients on a GPU travel through the host
  int64_t o = 0;
  for (auto& p : ps.all())
    if (p->grad.defined()) {
      ops.read(grads_.data() + o, p->g(), size_t(p->numel()) * sizeof(float));
      o += p->numel();
    }
  reduce_impl(grads_.data(), o);
  if (n_extra > 0) reduce_impl(extra, n_extra);
  o = 0;
  for (auto& p : ps.all())
    if (p->grad.defined()) {
      float* g = grads_.data() + o;
      for (int64_t i = 0; i < p->numel(); ++i) g[i] *= scale;
      ops.write(p->g(), g, size_t(p->numel()) * sizeof(float));
      o += p->numel();
    }
}

void DataParallel::gather(const float* x, int64_t n, std::vector<float>* out) {
  const size_t bytes = size_t(n) * sizeof(float);
  if (leader()) {
    out->resize(size_t(n) * size_t(opt_.world));
    std::memcpy(out->data(), x, bytes);
    for (int r = 1; r < opt_.world; ++r) recv_all(peers_[size_t(r - 1)], out->data() + size_t(r) * size_t(n), bytes, r);
  } else {
    send_all(peers_[0], x, bytes, 0);
  }
}

void DataParallel::broadcast(float* x, int64_t n) {
  if (opt_.world == 1 || n == 0) return;
  const size_t bytes = size_t(n) * sizeof(float);
  if (leader()) {
    for (int r = 1; r < opt_.world; ++r) send_all(peers_[size_t(r - 1)], x, bytes, r);
  } else {
    recv_all(peers_[0], x, bytes, 0);
  }
}

void DataParallel::broadcast(std::string& s) {
  if (opt_.world == 1) return;
  uint64_t len = s.size();
  if (leader()) {
    for (int r = 1; r < opt_.world; ++r) {
      send_all(peers_[size_t(r - 1)], &len, sizeof len, r);
      send_all(peers_[size_t(r - 1)], s.data(), s.size(), r);
    }
  } else {
    recv_all(peers_[0], &len, sizeof len, 0);
    if (len > (uint64_t(1) << 32)) fail("data parallel: rank 0 sent a message of ", len, " bytes (corrupt stream)");
    s.assign(size_t(len), '\0');
    if (len > 0) recv_all(peers_[0], s.data(), size_t(len), 0);
  }
}

void DataParallel::barrier() {
  double one = 1;
  reduce_impl(&one, 1);
}

}  // namespace hwaga::train
