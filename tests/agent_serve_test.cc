// `mapscope serve`: the Prometheus exposition, checked by promtool and
// scraped by a real Prometheus server (Debian's `prometheus` package) on
// loopback.  End-to-end tests skip without root.

#include "prometheus.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <regex>
#include <string>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "agent_test_util.h"
#include "command_options.h"
#include "gtest/gtest.h"

namespace {

using agent_test::Child;
using agent_test::TempDir;

// --- Helpers ----------------------------------------------------------------------

// A GET on loopback; the body ("" on failure).  Test-side only: a request
// line and a read until the server closes (HTTP/1.0).
std::string HttpGet(uint16_t port, const std::string& path, int* status = nullptr) {
  const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  timeval tv{5, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  std::string resp;
  if (connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) == 0) {
    const std::string req = "GET " + path + " HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n";
    if (write(fd, req.data(), req.size()) == static_cast<ssize_t>(req.size())) {
      char buf[65536];
      for (ssize_t n; (n = read(fd, buf, sizeof(buf))) > 0;) resp.append(buf, n);
    }
  }
  close(fd);
  const size_t body = resp.find("\r\n\r\n");
  if (status) *status = resp.size() > 12 ? std::atoi(resp.c_str() + 9) : 0;
  return body == std::string::npos ? std::string() : resp.substr(body + 4);
}

uint16_t FreePort() {
  const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a));
  socklen_t len = sizeof(a);
  getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  close(fd);
  return ntohs(a.sin_port);
}

// `promtool check metrics` over `text`: its exit status; its output in *out.
int Promtool(const std::string& text, std::string* out) {
  TempDir dir;
  {
    std::ofstream f(dir.File("m.txt"));
    f << text;
  }
  const std::string cmd = "promtool check metrics < " + dir.File("m.txt") + " > " +
                          dir.File("o.txt") + " 2>&1";
  const int rc = std::system(cmd.c_str());
  if (out) *out = agent_test::ReadFile(dir.File("o.txt"));
  return WIFEXITED(rc) ? WEXITSTATUS(rc) : 128;
}

bool HavePromtool() { return std::system("command -v promtool >/dev/null 2>&1") == 0; }

// Waits for "serving ... on http://127.0.0.1:PORT/metrics" in the server's
// stderr; 0 on timeout.
uint16_t WaitForPort(const Child& serve, double seconds) {
  const std::regex re("on http://127\\.0\\.0\\.1:([0-9]+)/metrics");
  for (int i = 0; i < seconds * 20; ++i) {
    std::smatch m;
    const std::string err = serve.err();
    if (std::regex_search(err, m, re)) return static_cast<uint16_t>(std::stoi(m[1]));
    if (!serve.Running()) return 0;
    agent_test::SleepFor(0.05);
  }
  return 0;
}

// --- Exposition ----------------------------------------------------------------------

TEST(Prometheus, LabelValuesAreEscapedAndBounded) {
  EXPECT_EQ(mapscope::PromLabelValue("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
  EXPECT_EQ(mapscope::PromLabelValue("bad\xff"), "bad\xEF\xBF\xBD");
  EXPECT_EQ(mapscope::PromLabelValue("ctl\x01"), "ctl\xEF\xBF\xBD");
  EXPECT_EQ(mapscope::PromLabelValue("caf\xc3\xa9"), "caf\xc3\xa9");
  const std::string long_value = mapscope::PromLabelValue(std::string(10240, 'L'));
  EXPECT_LE(long_value.size(), mapscope::kMaxLabelBytes);
  EXPECT_TRUE(absl::EndsWith(long_value, "..."));
  // An escape is never cut in half.
  const std::string quotes = mapscope::PromLabelValue(std::string(200, '"'));
  EXPECT_LE(quotes.size(), mapscope::kMaxLabelBytes);
  EXPECT_TRUE(absl::StrContains(quotes, "\\\"\\\"..."));
}

mapscope::MapSample Sample(uint64_t addr, const std::string& name) {
  mapscope::MapSample m;
  m.key = {addr, 1};
  m.name = name;
  m.has_name = true;
  m.has_gauges = true;
  m.gauges.read_len = 100;
  m.gauges.live = 60;
  m.gauges.tombstones = 40;
  m.gauges.promotions_total = 7;
  m.gauges.misses_total = 70;
  m.events.promote_ns = 123456;
  m.promote_hist.slots[12] = 5;
  m.promote_hist.slots[31] = 2;
  return m;
}

TEST(Prometheus, ExpositionPassesPromtool) {
  if (!HavePromtool()) FAIL() << "no promtool (Debian package prometheus) (make test installs it)";
  mapscope::Registry registry;
  mapscope::Poll poll;
  poll.at = absl::Now();
  poll.maps.push_back(Sample(0x1000, "sessions"));
  poll.maps.push_back(Sample(0x2000, "quote\"back\\slash\nnewline\x01\xff"));
  poll.maps.push_back(Sample(0x3000, std::string(10240, 'L')));
  poll.maps.push_back(Sample(0x4000, ""));
  registry.Add(poll);
  mapscope::MetricsInput in;
  in.registry = &registry;
  mapscope::Finding f;
  f.check = "stale_read";
  f.severity = mapscope::Severity::kWarning;
  f.map_addr = "0x1000";
  in.findings.push_back(f);
  in.rss_bytes = 1 << 20;
  const std::string text = mapscope::FormatPrometheus(in);
  std::string out;
  EXPECT_EQ(Promtool(text, &out), 0) << out << "\n" << text.substr(0, 3000);
  EXPECT_TRUE(absl::StrContains(
      text, "syncmap_promotions_total{map=\"sessions\",addr=\"0x1000\"} 7\n"));
  EXPECT_TRUE(absl::StrContains(
      text, "mapscope_health{check=\"stale_read\",map=\"sessions\",addr=\"0x1000\"} 1\n"));
  EXPECT_TRUE(absl::StrContains(
      text, "mapscope_health{check=\"leak\",map=\"sessions\",addr=\"0x1000\"} 0\n"));
  // Histogram: cumulative buckets, the open-ended slot only in +Inf.
  EXPECT_TRUE(absl::StrContains(
      text,
      "syncmap_promote_duration_seconds_bucket{map=\"sessions\",addr=\"0x1000\",le=\"+Inf\"} 7\n"));
  EXPECT_TRUE(absl::StrContains(
      text,
      "syncmap_promote_duration_seconds_bucket{map=\"sessions\",addr=\"0x1000\",le=\"8.192e-06\"} 5\n"));
  EXPECT_TRUE(absl::StrContains(text, "map=\"quote\\\"back\\\\slash\\nnewline"));
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    EXPECT_LT(line.size(), 400u) << line.substr(0, 200);
  }
}

TEST(Prometheus, ListenAddresses) {
  auto a = mapscope::ParseListen("127.0.0.1:9464");
  ASSERT_TRUE(a.ok());
  EXPECT_TRUE(a->loopback);
  EXPECT_EQ(a->port, 9464);
  EXPECT_TRUE(mapscope::ParseListen("[::1]:9464")->loopback);
  EXPECT_TRUE(mapscope::ParseListen("localhost:1")->loopback);
  EXPECT_FALSE(mapscope::ParseListen("0.0.0.0:9464")->loopback);
  EXPECT_FALSE(mapscope::ParseListen("[::]:9464")->loopback);
  EXPECT_FALSE(mapscope::ParseListen("example.com:80").ok());
  EXPECT_FALSE(mapscope::ParseListen("127.0.0.1:99999").ok());
  EXPECT_FALSE(mapscope::ParseListen("127.0.0.1").ok());
}

// --- End to end ------------------------------------------------------------------------

class ServeE2E : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!agent_test::IsRoot()) GTEST_SKIP() << "needs root (BPF)";
    if (!agent_test::Exists(agent_test::Mapscope()) || !agent_test::Exists(agent_test::Mapload())) {
      FAIL() << "build/mapscope or build/mapload missing (make test builds it)";
    }
    if (!HavePromtool()) {
      FAIL() << "no promtool/prometheus (Debian package prometheus) (make test installs it)";
    }
  }
};

TEST_F(ServeE2E, RealPrometheusScrapesTheMaps) {
  TempDir dir;
  Child target({agent_test::Mapload(), "--scenario", "storm", "--seconds", "30", "--start-delay",
                "0.5"},
               dir.File("t.out"), dir.File("t.err"));
  Child serve({agent_test::Mapscope(), "serve", "--pid", std::to_string(target.pid()), "--listen",
               "127.0.0.1:0", "--interval", "500ms"},
              dir.File("s.out"), dir.File("s.err"));
  const uint16_t port = WaitForPort(serve, 15);
  ASSERT_NE(port, 0) << serve.err();

  // Our own scrape first: promtool accepts it, the map is there.
  std::string body;
  for (int i = 0; i < 40; ++i) {
    body = HttpGet(port, "/metrics");
    if (absl::StrContains(body, "syncmap_promotions_total{map=\"mapload.storm\"")) break;
    agent_test::SleepFor(0.25);
  }
  ASSERT_TRUE(absl::StrContains(body, "syncmap_promotions_total{map=\"mapload.storm\"")) << body;
  std::string out;
  EXPECT_EQ(Promtool(body, &out), 0) << out;
  EXPECT_TRUE(absl::StrContains(body, "syncmap_promote_duration_seconds_bucket{"));
  EXPECT_TRUE(absl::StrContains(body, "mapscope_health{check=\"promotion_jitter\""));
  EXPECT_TRUE(absl::StrContains(body, "mapscope_drops_total{reason=\"map_full\"}"));
  int status = 0;
  HttpGet(port, "/nope", &status);
  EXPECT_EQ(status, 404);

  // A real Prometheus server scraping it every second.
  const uint16_t prom_port = FreePort();
  {
    std::ofstream cfg(dir.File("prometheus.yml"));
    cfg << "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n"
        << "scrape_configs:\n  - job_name: mapscope\n    static_configs:\n"
        << "      - targets: ['127.0.0.1:" << port << "']\n";
  }
  Child prom({"/usr/bin/prometheus", "--config.file=" + dir.File("prometheus.yml"),
              "--storage.tsdb.path=" + dir.File("tsdb"),
              "--web.listen-address=127.0.0.1:" + std::to_string(prom_port)},
             dir.File("p.out"), dir.File("p.err"));
  nlohmann::json result;
  for (int i = 0; i < 60 && result.empty(); ++i) {
    agent_test::SleepFor(0.5);
    const std::string r = HttpGet(prom_port, "/api/v1/query?query=syncmap_promotions_total");
    if (r.empty()) continue;
    auto j = nlohmann::json::parse(r, nullptr, /*allow_exceptions=*/false);
    if (j.is_discarded() || j["status"] != "success") continue;
    for (const auto& series : j["data"]["result"]) {
      if (series["metric"]["map"] == "mapload.storm") result = series;
    }
  }
  ASSERT_FALSE(result.empty()) << agent_test::ReadFile(dir.File("p.err")).substr(0, 3000);
  EXPECT_EQ(result["metric"]["job"], "mapscope");
  EXPECT_TRUE(absl::StartsWith(result["metric"]["addr"].get<std::string>(), "0x"));
  double value = 0;
  ASSERT_TRUE(absl::SimpleAtod(result["value"][1].get<std::string>(), &value));
  EXPECT_GT(value, 0);
  prom.Signal(SIGTERM);
  prom.Wait(std::chrono::seconds(10));

  // SIGTERM stops serve cleanly.
  serve.Signal(SIGTERM);
  EXPECT_EQ(serve.Wait(std::chrono::seconds(10)), 0) << serve.err();
  EXPECT_TRUE(absl::StrContains(serve.err(), "stopped (signal)")) << serve.err();
}

TEST_F(ServeE2E, HostileNamesScrapeCleanly) {
  const std::string fixture = agent_test::BuildDir() + "/tests/hostile_names";
  if (!agent_test::Exists(fixture)) FAIL() << "no " << fixture << " (make test builds it)";
  TempDir dir;
  Child target({fixture, "0.3", "6"}, dir.File("t.out"), dir.File("t.err"));
  Child serve({agent_test::Mapscope(), "serve", "--pid", std::to_string(target.pid()), "--listen",
               "127.0.0.1:0", "--interval", "300ms", "--malloc", "off"},
              dir.File("s.out"), dir.File("s.err"));
  const uint16_t port = WaitForPort(serve, 15);
  ASSERT_NE(port, 0) << serve.err();
  std::string body;
  for (int i = 0; i < 40; ++i) {
    body = HttpGet(port, "/metrics");
    if (absl::StrContains(body, "mapscope_maps 5")) break;
    agent_test::SleepFor(0.25);
  }
  ASSERT_TRUE(absl::StrContains(body, "mapscope_maps 5")) << body.substr(0, 3000);
  std::string out;
  EXPECT_EQ(Promtool(body, &out), 0) << out;
  EXPECT_TRUE(absl::StrContains(body, "map=\"quote\\\"back\\\\slash\\nnewline\""));
  EXPECT_TRUE(absl::StrContains(body, "map=\"semi;colon and spaces\""));
  for (absl::string_view line : absl::StrSplit(body, '\n')) {
    EXPECT_LT(line.size(), 400u) << line.substr(0, 200);
  }
  // The target exits: serve stops by itself, exit 0.
  EXPECT_EQ(serve.Wait(std::chrono::seconds(20)), 0) << serve.err();
  EXPECT_TRUE(absl::StrContains(serve.err(), "target exit")) << serve.err();
}

TEST_F(ServeE2E, TakenPortAndRemoteAddressesAreRefused) {
  TempDir dir;
  Child target({agent_test::Mapload(), "--scenario", "healthy", "--seconds", "20",
                "--start-delay", "0"},
               dir.File("t.out"), dir.File("t.err"));
  agent_test::SleepFor(0.2);
  const std::string pid = std::to_string(target.pid());

  // A port someone else holds: one line, exit 3.
  const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)), 0);
  ASSERT_EQ(listen(fd, 1), 0);
  socklen_t len = sizeof(a);
  getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  const std::string taken = "127.0.0.1:" + std::to_string(ntohs(a.sin_port));
  std::string out, err;
  EXPECT_EQ(agent_test::Run({agent_test::Mapscope(), "serve", "--pid", pid, "--listen", taken,
                             "--malloc", "off"},
                            &out, &err),
            3);
  EXPECT_EQ(agent_test::CountLines(err), 1u) << err;
  EXPECT_TRUE(absl::StrContains(err, "Address already in use")) << err;
  close(fd);

  // Non-loopback: refused without --allow-remote, served with it (warning).
  EXPECT_EQ(agent_test::Run({agent_test::Mapscope(), "serve", "--pid", pid, "--listen",
                             "0.0.0.0:0"},
                            &out, &err),
            3);
  EXPECT_TRUE(absl::StrContains(err, "--allow-remote")) << err;
  EXPECT_EQ(agent_test::Run({agent_test::Mapscope(), "serve", "--pid", pid, "--listen",
                             "0.0.0.0:0", "--allow-remote", "--duration", "1", "--malloc", "off"},
                            &out, &err),
            0)
      << err;
  EXPECT_TRUE(absl::StrContains(err, "warning: serving metrics on non-loopback")) << err;
}

}  // namespace
