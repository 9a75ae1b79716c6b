// train/data_parallel.h with two ranks as two threads of this process over 127.0.0.1:
//  - sums (float, double, gradients with a scale and extra values) are the same on both ranks
//    and add in rank order; gather collects in rank order; broadcast of values and strings;
//  - a rank whose fingerprint differs is refused, with the reason on both sides;
//  - a rank with nobody to connect to gives up after its timeout, naming the address;
//  - bad ranks and addresses are refused before any connection.
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "core/error.h"
#include "train/data_parallel.h"

using namespace hwaga;
using namespace hwaga::train;

namespace {

int free_port() {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = 0;
  bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a);
  socklen_t n = sizeof a;
  getsockname(fd, reinterpret_cast<sockaddr*>(&a), &n);
  close(fd);
  return ntohs(a.sin_port);
}

DataParallelOptions opts(int rank, int port, double timeout = 30) {
  DataParallelOptions o;
  o.rank = rank;
  o.world = 2;
  o.addr = "127.0.0.1:" + std::to_string(port);
  o.timeout_s = timeout;
  return o;
}

// Runs body(rank) on two threads; an exception's message ends up in errors[rank].
void two_ranks(const std::function<void(int)>& body, std::string errors[2]) {
  std::vector<std::thread> ts;
  for (int r = 0; r < 2; ++r)
    ts.emplace_back([&, r] {
      try {
        body(r);
      } catch (const std::exception& e) {
        errors[r] = e.what();
      }
    });
  for (auto& t : ts) t.join();
}

}  // namespace

TEST(DataParallel, CollectivesAgreeOnBothRanks) {
  const int port = free_port();
  std::vector<float> sums[2], gathered[2], bcast[2];
  std::vector<double> dsums[2];
  std::string text[2], errors[2];
  float grads[2][3];
  double extra[2][2];
  two_ranks(
      [&](int r) {
        DataParallel dp(opts(r, port), 42);
        EXPECT_EQ(dp.leader(), r == 0);
        sums[r] = {1.0f + r, 10.0f * (r + 1), -3.0f};
        dp.all_reduce_sum(sums[r].data(), 3);
        dsums[r] = {0.5 * (r + 1)};
        dp.all_reduce_sum(dsums[r].data(), 1);
        const float mine[2] = {float(r), float(r) + 0.5f};
        dp.gather(mine, 2, &gathered[r]);
        bcast[r] = {float(7 + r), float(8 + r)};
        dp.broadcast(bcast[r].data(), 2);
        text[r] = r == 0 ? std::string("rank 0's tokenizer\n\x01\x02", 21) : std::string("ignored");
        dp.broadcast(text[r]);
        ParamSet ps;
        Param& p = ps.add("w", {3});
        ps.add("buf", {2}, ParamKind::buffer);
        for (int k = 0; k < 3; ++k) p.g()[k] = float(k + 1) * float(r + 1);
        extra[r][0] = r + 1.0, extra[r][1] = 0.0;
        dp.all_reduce_grads(ps, 0.5f, extra[r], 2);
        for (int k = 0; k < 3; ++k) grads[r][k] = p.g()[k];
        dp.barrier();
      },
      errors);
  ASSERT_EQ(errors[0], "");
  ASSERT_EQ(errors[1], "");
  for (int r = 0; r < 2; ++r) {
    EXPECT_EQ(sums[r], (std::vector<float>{3.0f, 30.0f, -6.0f})) << "rank " << r;
    EXPECT_EQ(dsums[r], (std::vector<double>{1.5})) << "rank " << r;
    EXPECT_EQ(bcast[r], (std::vector<float>{7.0f, 8.0f})) << "rank " << r;
    EXPECT_EQ(text[r], std::string("rank 0's tokenizer\n\x01\x02", 21)) << "rank " << r;
    for (int k = 0; k < 3; ++k) EXPECT_EQ(grads[r][k], 0.5f * 3.0f * float(k + 1)) << "rank " << r;
    EXPECT_EQ(extra[r][0], 3.0);
  }
  EXPECT_EQ(gathered[0], (std::vector<float>{0.0f, 0.5f, 1.0f, 1.5f}));  // rank order
  EXPECT_TRUE(gathered[1].empty());
}

TEST(DataParallel, AnotherFingerprintIsRefused) {
  const int port = free_port();
  std::string errors[2];
  two_ranks([&](int r) { DataParallel dp(opts(r, port), r == 0 ? 1 : 2); }, errors);
  EXPECT_NE(errors[0].find("refused rank 1"), std::string::npos) << errors[0];
  EXPECT_NE(errors[1].find("settings"), std::string::npos) << errors[1];
}

TEST(DataParallel, NobodyListeningTimesOut) {
  try {
    DataParallel dp(opts(1, free_port(), 0.5), 1);
    FAIL() << "connected to nobody";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("could not reach rank 0 at 127.0.0.1:"), std::string::npos) << e.what();
  }
}

TEST(DataParallel, BadRanksAndAddresses) {
  DataParallelOptions o = opts(2, 1);
  EXPECT_THROW(DataParallel(o, 1), Error);
  o.rank = -1;
  EXPECT_THROW(DataParallel(o, 1), Error);
  for (const char* bad : {"localhost", ":80", "host:", "host:0", "host:65536", "host:12x"})
    EXPECT_THROW(parse_dist_addr(bad, "--dist-addr"), Error) << bad;
  EXPECT_EQ(parse_dist_addr("[::1]:29500", "--dist-addr"), (std::pair<std::string, int>{"::1", 29500}));
  DataParallelOptions one;  // world 1: nothing to connect, every collective is a no-op
  DataParallel dp(one, 7);
  float x[2] = {1, 2};
  dp.all_reduce_sum(x, 2);
  EXPECT_EQ(x[1], 2.0f);
  EXPECT_TRUE(dp.leader());
}
