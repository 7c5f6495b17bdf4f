#include "http_server.h"

#include <arpa/inet.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"

namespace mapscope {
namespace {

constexpr char kContentType[] = "text/plain; version=0.0.4; charset=utf-8";
constexpr char kIndex[] =
    "mapscope: Prometheus metrics of a traced process on /metrics\n";

MHD_Result Respond(MHD_Connection* c, unsigned status, const std::string& body,
                   const char* type) {
  MHD_Response* r = MHD_create_response_from_buffer(body.size(), const_cast<char*>(body.data()),
                                                    MHD_RESPMEM_MUST_COPY);
  if (!r) return MHD_NO;
  MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, type);
  const MHD_Result ret = MHD_queue_response(c, status, r);
  MHD_destroy_response(r);
  return ret;
}

MHD_Result AccessHandler(void* cls, MHD_Connection* connection, const char* url,
                         const char* method, const char* /*version*/,
                         const char* /*upload_data*/, size_t* upload_data_size,
                         void** /*con_cls*/) {
  if (*upload_data_size != 0) {  // a request body: not ours to read
    *upload_data_size = 0;
    return MHD_YES;
  }
  return static_cast<MetricsServer*>(cls)->Handle(connection, url, method) ? MHD_YES : MHD_NO;
}

}  // namespace

absl::StatusOr<std::unique_ptr<MetricsServer>> MetricsServer::Start(const ListenAddress& addr) {
  const std::string where =
      addr.ipv6 ? absl::StrCat("[", addr.host, "]:", addr.port) : absl::StrCat(addr.host, ":", addr.port);
  std::unique_ptr<MetricsServer> s(new MetricsServer());
  s->listen_fd_ = Fd(::socket(addr.ipv6 ? AF_INET6 : AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!s->listen_fd_.valid()) return absl::ErrnoToStatus(errno, absl::StrCat("listen ", where));
  const int one = 1;
  setsockopt(s->listen_fd_.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  sockaddr_storage ss = {};
  socklen_t len;
  if (addr.ipv6) {
    auto* a = reinterpret_cast<sockaddr_in6*>(&ss);
    a->sin6_family = AF_INET6;
    a->sin6_port = htons(addr.port);
    inet_pton(AF_INET6, addr.host.c_str(), &a->sin6_addr);
    len = sizeof(*a);
  } else {
    auto* a = reinterpret_cast<sockaddr_in*>(&ss);
    a->sin_family = AF_INET;
    a->sin_port = htons(addr.port);
    inet_pton(AF_INET, addr.host.c_str(), &a->sin_addr);
    len = sizeof(*a);
  }
  if (::bind(s->listen_fd_.get(), reinterpret_cast<sockaddr*>(&ss), len) != 0 ||
      ::listen(s->listen_fd_.get(), 64) != 0) {
    return absl::ErrnoToStatus(errno, absl::StrCat("listen ", where));
  }
  if (::getsockname(s->listen_fd_.get(), reinterpret_cast<sockaddr*>(&ss), &len) == 0) {
    s->port_ = ntohs(addr.ipv6 ? reinterpret_cast<sockaddr_in6*>(&ss)->sin6_port
                               : reinterpret_cast<sockaddr_in*>(&ss)->sin_port);
  }
  s->daemon_ = MHD_start_daemon(
      MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_EPOLL | MHD_USE_ITC | (addr.ipv6 ? MHD_USE_IPv6 : 0), 0,
      nullptr, nullptr, &AccessHandler, s.get(), MHD_OPTION_LISTEN_SOCKET,
      s->listen_fd_.get(), MHD_OPTION_CONNECTION_LIMIT, 64u, MHD_OPTION_CONNECTION_TIMEOUT, 10u,
      MHD_OPTION_END);
  if (s->daemon_ == nullptr) {
    return absl::InternalError(absl::StrCat("listen ", where, ": libmicrohttpd did not start"));
  }
  return s;
}

MetricsServer::~MetricsServer() {
  // Quiesced first, MHD hands the listening socket back instead of closing
  // it; listen_fd_ closes it once.
  if (daemon_) {
    MHD_quiesce_daemon(daemon_);
    MHD_stop_daemon(daemon_);
  }
}

void MetricsServer::Publish(std::string body) {
  absl::MutexLock lock(&mu_);
  body_ = std::move(body);
}

uint64_t MetricsServer::scrapes() const {
  absl::MutexLock lock(&mu_);
  return scrapes_;
}

int MetricsServer::Handle(MHD_Connection* c, const char* url, const char* method) {
  const bool get = std::strcmp(method, "GET") == 0 || std::strcmp(method, "HEAD") == 0;
  if (!get) return Respond(c, MHD_HTTP_METHOD_NOT_ALLOWED, "GET only\n", "text/plain") == MHD_YES;
  if (std::strcmp(url, "/metrics") == 0) {
    std::string body;
    {
      absl::MutexLock lock(&mu_);
      body = body_;
      ++scrapes_;
    }
    return Respond(c, MHD_HTTP_OK, body, kContentType) == MHD_YES;
  }
  if (std::strcmp(url, "/") == 0) return Respond(c, MHD_HTTP_OK, kIndex, "text/plain") == MHD_YES;
  return Respond(c, MHD_HTTP_NOT_FOUND, "not found: see /metrics\n", "text/plain") == MHD_YES;
}

}  // namespace mapscope
