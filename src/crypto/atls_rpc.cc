// aTLS RPC: frames, sockets, AtlsServer (fixed worker pool) and AtlsClient.
// Frame format: docs/formats/atls.md.
#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <deque>
#include <mutex>
#include <optional>
#include <set>
#include <thread>
#include <utility>
#include <vector>

#include "keywarden/crypto/atls.h"
#include "keywarden/status.h"
#include "src/crypto/atls_internal.h"

namespace keywarden::crypto {
namespace internal {

// --- Frames ---------------------------------------------------------------------------------

std::array<uint8_t, kFrameHeaderSize> FrameHeader(uint32_t size) {
  return {static_cast<uint8_t>(size >> 24), static_cast<uint8_t>(size >> 16),
          static_cast<uint8_t>(size >> 8), static_cast<uint8_t>(size)};
}

absl::StatusOr<std::string> EncodeRpcRequest(std::string_view method, std::string_view body) {
  if (method.empty() || method.size() > kMaxMethodSize) {
    return InvalidArgumentError("method name must be 1 to {} bytes, not {}", kMaxMethodSize,
                                method.size());
  }
  std::string payload;
  payload.reserve(1 + method.size() + body.size());
  payload.push_back(static_cast<char>(method.size()));
  payload.append(method);
  payload.append(body);
  return payload;
}

absl::StatusOr<RpcRequest> DecodeRpcRequest(std::string_view payload) {
  if (payload.empty()) return InvalidArgumentError("empty request frame");
  const size_t method_size = static_cast<uint8_t>(payload[0]);
  if (method_size == 0) return InvalidArgumentError("request frame names no method");
  if (payload.size() < 1 + method_size) {
    return InvalidArgumentError("request frame of {} bytes is too short for its {}-byte method",
                                payload.size(), method_size);
  }
  return RpcRequest{payload.substr(1, method_size), payload.substr(1 + method_size)};
}

std::string EncodeRpcResponse(const absl::StatusOr<std::string>& result, size_t max_payload) {
  if (result.ok() && 1 + result->size() <= max_payload) {
    std::string payload;
    payload.reserve(1 + result->size());
    payload.push_back(0);
    payload.append(*result);
    return payload;
  }
  absl::Status status = result.status();
  if (result.ok()) {
    status = MakeStatus(absl::StatusCode::kResourceExhausted,
                        "response of {} bytes exceeds the {}-byte frame limit", result->size(),
                        max_payload - 1);
  }
  int code = static_cast<int>(status.code());
  if (code <= 0 || code > static_cast<int>(absl::StatusCode::kUnauthenticated)) {
    code = static_cast<int>(absl::StatusCode::kUnknown);
  }
  const std::string message = StatusMessage(status);
  const size_t keep = std::min({message.size(), kMaxErrorMessageSize, max_payload - 1});
  std::string payload;
  payload.push_back(static_cast<char>(code));
  payload.append(message, 0, keep);
  return payload;
}

absl::StatusOr<RpcResponse> DecodeRpcResponse(std::string_view payload) {
  if (payload.empty()) return MakeStatus(absl::StatusCode::kDataLoss, "empty response frame");
  const int code = static_cast<uint8_t>(payload[0]);
  const std::string_view body = payload.substr(1);
  if (code == 0) return RpcResponse{absl::OkStatus(), std::string(body)};
  if (code > static_cast<int>(absl::StatusCode::kUnauthenticated)) {
    return MakeStatus(absl::StatusCode::kDataLoss, "response frame has unknown status code {}",
                      code);
  }
  if (body.size() > kMaxErrorMessageSize) {
    return MakeStatus(absl::StatusCode::kDataLoss,
                      "response frame has an error message of {} bytes (limit {})", body.size(),
                      kMaxErrorMessageSize);
  }
  return RpcResponse{absl::Status(static_cast<absl::StatusCode>(code),
                                  absl::string_view(body.data(), body.size())),
                     ""};
}

namespace {

// ReadFull reads until `out` is full or the peer closes; returns the bytes read.
absl::StatusOr<size_t> ReadFull(AtlsStream& stream, std::span<uint8_t> out, Deadline deadline) {
  size_t done = 0;
  while (done < out.size()) {
    ASSIGN_OR_RETURN(const size_t got, stream.Read(out.subspan(done), deadline));
    if (got == 0) break;
    done += got;
  }
  return done;
}

// ReadFrame returns the next frame's payload, or nullopt if the peer closed the connection
// cleanly between frames. RESOURCE_EXHAUSTED for a frame above `max_payload`.
absl::StatusOr<std::optional<std::string>> ReadFrame(AtlsStream& stream, size_t max_payload,
                                                     Deadline deadline) {
  std::array<uint8_t, kFrameHeaderSize> header;
  ASSIGN_OR_RETURN(const size_t got, ReadFull(stream, header, deadline));
  if (got == 0) return std::nullopt;
  if (got < header.size()) return UnavailableError("connection closed inside a frame header");
  const uint32_t size = (uint32_t{header[0]} << 24) | (uint32_t{header[1]} << 16) |
                        (uint32_t{header[2]} << 8) | uint32_t{header[3]};
  if (size > max_payload) {
    return MakeStatus(absl::StatusCode::kResourceExhausted,
                      "frame of {} bytes exceeds the {}-byte limit", size, max_payload);
  }
  std::string payload(size, '\0');
  ASSIGN_OR_RETURN(
      const size_t body,
      ReadFull(stream, std::span<uint8_t>(reinterpret_cast<uint8_t*>(payload.data()), size),
               deadline));
  if (body < size) {
    return UnavailableError("connection closed inside a frame ({} of {} bytes)", body, size);
  }
  return payload;
}

absl::Status WriteFrame(AtlsStream& stream, std::string_view payload, Deadline deadline) {
  const auto header = FrameHeader(static_cast<uint32_t>(payload.size()));
  std::string frame;
  frame.reserve(header.size() + payload.size());
  frame.append(reinterpret_cast<const char*>(header.data()), header.size());
  frame.append(payload);
  return stream.Write(
      std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(frame.data()), frame.size()),
      deadline);
}

// --- Sockets --------------------------------------------------------------------------------

std::string FormatAddress(const sockaddr_storage& addr) {
  char text[INET6_ADDRSTRLEN] = "?";
  if (addr.ss_family == AF_INET) {
    const auto* a = reinterpret_cast<const sockaddr_in*>(&addr);
    inet_ntop(AF_INET, &a->sin_addr, text, sizeof(text));
    return fmt::format("{}:{}", text, ntohs(a->sin_port));
  }
  if (addr.ss_family == AF_INET6) {
    const auto* a = reinterpret_cast<const sockaddr_in6*>(&addr);
    inet_ntop(AF_INET6, &a->sin6_addr, text, sizeof(text));
    return fmt::format("[{}]:{}", text, ntohs(a->sin6_port));
  }
  return "unknown";
}

struct Endpoint {
  std::string host;
  std::string port;
};

absl::StatusOr<Endpoint> ParseEndpoint(std::string_view endpoint) {
  std::string_view host, port;
  if (!endpoint.empty() && endpoint[0] == '[') {
    const size_t close = endpoint.find(']');
    if (close == std::string_view::npos || close + 1 >= endpoint.size() ||
        endpoint[close + 1] != ':') {
      return InvalidArgumentError("endpoint \"{}\" is not [host]:port", Printable(endpoint));
    }
    host = endpoint.substr(1, close - 1);
    port = endpoint.substr(close + 2);
  } else {
    const size_t colon = endpoint.rfind(':');
    if (colon == std::string_view::npos ||
        endpoint.substr(0, colon).find(':') != std::string_view::npos) {
      return InvalidArgumentError("endpoint \"{}\" is not host:port (IPv6 hosts in brackets)",
                                  Printable(endpoint));
    }
    host = endpoint.substr(0, colon);
    port = endpoint.substr(colon + 1);
  }
  unsigned value = 0;
  const auto [end, ec] = std::from_chars(port.data(), port.data() + port.size(), value);
  if (host.empty() || port.empty() || ec != std::errc() || end != port.data() + port.size() ||
      value == 0 || value > 65535) {
    return InvalidArgumentError("endpoint \"{}\" has no valid host and port 1-65535",
                                Printable(endpoint));
  }
  return Endpoint{std::string(host), std::string(port)};
}

struct AddrInfoDeleter {
  void operator()(addrinfo* a) const { freeaddrinfo(a); }
};

absl::StatusOr<std::unique_ptr<addrinfo, AddrInfoDeleter>> Resolve(const Endpoint& endpoint,
                                                                   bool passive) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICSERV | (passive ? AI_PASSIVE : 0);
  addrinfo* result = nullptr;
  const int rc = getaddrinfo(endpoint.host.c_str(), endpoint.port.c_str(), &hints, &result);
  if (rc != 0) {
    return UnavailableError("cannot resolve \"{}\": {}", Printable(endpoint.host),
                            gai_strerror(rc));
  }
  return std::unique_ptr<addrinfo, AddrInfoDeleter>(result);
}

void SetNoDelay(int fd) {
  const int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}

struct Connected {
  UniqueFd fd;
  std::string address;
};

// ConnectTcp connects a non-blocking socket to `endpoint` before `deadline`, trying each
// resolved address in turn.
absl::StatusOr<Connected> ConnectTcp(std::string_view endpoint, Deadline deadline) {
  ASSIGN_OR_RETURN(const Endpoint parsed, ParseEndpoint(endpoint));
  ASSIGN_OR_RETURN(auto addresses, Resolve(parsed, /*passive=*/false));
  int last_error = ECONNREFUSED;
  for (addrinfo* a = addresses.get(); a != nullptr; a = a->ai_next) {
    UniqueFd fd(socket(a->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
    if (!fd.valid()) {
      last_error = errno;
      continue;
    }
    if (connect(fd.get(), a->ai_addr, a->ai_addrlen) != 0) {
      if (errno != EINPROGRESS) {
        last_error = errno;
        continue;
      }
      absl::Status ready =
          WaitFd(fd.get(), POLLOUT, deadline, fmt::format("connecting to {}", Printable(endpoint)));
      if (!ready.ok()) return ready;
      int error = 0;
      socklen_t size = sizeof(error);
      if (getsockopt(fd.get(), SOL_SOCKET, SO_ERROR, &error, &size) != 0) error = errno;
      if (error != 0) {
        last_error = error;
        continue;
      }
    }
    SetNoDelay(fd.get());
    sockaddr_storage peer{};
    std::memcpy(&peer, a->ai_addr, std::min<size_t>(a->ai_addrlen, sizeof(peer)));
    return Connected{std::move(fd), FormatAddress(peer)};
  }
  return UnavailableError("cannot connect to {}: {}", Printable(endpoint),
                          std::strerror(last_error));
}

struct Listening {
  UniqueFd fd;
  uint16_t port;
};

// ListenTcp binds and listens on host:port (port 0: any free port), non-blocking.
absl::StatusOr<Listening> ListenTcp(const std::string& host, uint16_t port) {
  const Endpoint endpoint{host, std::to_string(port)};
  ASSIGN_OR_RETURN(auto addresses, Resolve(endpoint, /*passive=*/true));
  int last_error = EADDRNOTAVAIL;
  for (addrinfo* a = addresses.get(); a != nullptr; a = a->ai_next) {
    UniqueFd fd(socket(a->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
    if (!fd.valid()) {
      last_error = errno;
      continue;
    }
    const int one = 1;
    setsockopt(fd.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (bind(fd.get(), a->ai_addr, a->ai_addrlen) != 0 || listen(fd.get(), SOMAXCONN) != 0) {
      last_error = errno;
      continue;
    }
    sockaddr_storage local{};
    socklen_t size = sizeof(local);
    if (getsockname(fd.get(), reinterpret_cast<sockaddr*>(&local), &size) != 0) {
      last_error = errno;
      continue;
    }
    const uint16_t bound =
        ntohs(local.ss_family == AF_INET6 ? reinterpret_cast<const sockaddr_in6*>(&local)->sin6_port
                                          : reinterpret_cast<const sockaddr_in*>(&local)->sin_port);
    return Listening{std::move(fd), bound};
  }
  return UnavailableError("cannot listen on {}:{}: {}", Printable(host), port,
                          std::strerror(last_error));
}

absl::Status CheckFrameLimit(size_t max_frame_size) {
  if (max_frame_size < kMinFrameLimit || max_frame_size > kMaxFrameLimit) {
    return InvalidArgumentError("max_frame_size must be {} to {} bytes, not {}", kMinFrameLimit,
                                kMaxFrameLimit, max_frame_size);
  }
  return absl::OkStatus();
}

// ReadableWithin reports whether `fd` has input (or an end of stream) within `wait`.
bool ReadableWithin(int fd, std::chrono::milliseconds wait) {
  pollfd p{fd, POLLIN, 0};
  int r;
  do {
    r = poll(&p, 1, static_cast<int>(wait.count()));
  } while (r < 0 && errno == EINTR);
  return r > 0;
}

// kGrace is how long a worker waits for a connection's next request (or its close) before it
// parks the connection with the poller: clients usually send their first request, or close,
// right after the handshake or a response, and a short wait saves a hand-over between threads.
constexpr std::chrono::milliseconds kGrace{2};

// kLinger bounds how long a refused connection is drained before it is closed.
constexpr std::chrono::milliseconds kLinger{1000};

}  // namespace
}  // namespace internal

using internal::AtlsContext;
using internal::AtlsStream;
using internal::Clock;
using internal::Deadline;
using internal::UniqueFd;

// --- AtlsServer -----------------------------------------------------------------------------

// The server's threads: one poller (accepts, and watches idle established connections) and a
// fixed pool of workers (handshakes, and requests that have arrived). An idle connection holds
// no thread, only its socket and TLS state; AtlsServerOptions::max_connections bounds those.

// ServerConnection is one accepted connection, owned by exactly one of: the work queue, a
// worker, the poller's idle set.
struct ServerConnection {
  UniqueFd fd;  // declared before stream: closed after it is freed
  std::string address;
  std::unique_ptr<AtlsStream> stream;  // null until the handshake has completed
  Deadline idle_deadline{};
};

struct AtlsServer::Impl {
  // Outcome of one worker turn on a connection.
  enum class Next { kPark, kClose, kLingerThenClose };

  AtlsServerOptions options;
  AtlsHandler handler;
  std::unique_ptr<AtlsContext> context;
  UniqueFd listen_fd;
  UniqueFd wake_fd;  // eventfd: wakes the poller (a connection came back, or Shutdown)
  uint16_t port = 0;

  std::mutex shutdown_mu;  // serializes Shutdown
  bool joined = false;     // guarded by shutdown_mu

  std::mutex mu;
  std::condition_variable cv;
  bool stopping = false;                                   // guarded by mu
  std::deque<std::unique_ptr<ServerConnection>> work;      // guarded by mu
  std::vector<std::unique_ptr<ServerConnection>> parking;  // guarded by mu; for the poller
  std::set<int> active;                                    // guarded by mu; fds in workers
  size_t connections = 0;                                  // guarded by mu; all open ones
  std::thread poller;
  std::vector<std::thread> workers;

  bool Stopping() {
    std::lock_guard<std::mutex> lock(mu);
    return stopping;
  }
  void Wake() {
    const uint64_t one = 1;
    (void)!write(wake_fd.get(), &one, sizeof(one));
  }

  void PollLoop();
  void AcceptReady();
  void WorkerLoop();
  Next Serve(ServerConnection& connection);
};

void AtlsServer::Impl::AcceptReady() {
  // Accept what is waiting, as long as the connection bound allows.
  while (true) {
    {
      std::lock_guard<std::mutex> lock(mu);
      if (stopping || connections >= options.max_connections) return;
    }
    sockaddr_storage addr{};
    socklen_t size = sizeof(addr);
    const int fd = accept4(listen_fd.get(), reinterpret_cast<sockaddr*>(&addr), &size,
                           SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
        // Out of descriptors: give running connections time to finish.
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
      }
      return;
    }
    auto connection = std::make_unique<ServerConnection>();
    connection->fd = UniqueFd(fd);
    connection->address = internal::FormatAddress(addr);
    internal::SetNoDelay(fd);
    {
      std::lock_guard<std::mutex> lock(mu);
      if (stopping) return;
      ++connections;
      work.push_back(std::move(connection));
    }
    cv.notify_one();
  }
}

void AtlsServer::Impl::PollLoop() {
  std::vector<std::unique_ptr<ServerConnection>> idle;  // owned by this thread only
  std::vector<pollfd> fds;
  while (true) {
    bool can_accept;
    {
      std::lock_guard<std::mutex> lock(mu);
      if (stopping) break;
      for (auto& c : parking) idle.push_back(std::move(c));
      parking.clear();
      can_accept = connections < options.max_connections;
    }
    // Close connections idle past their deadline; find the next deadline.
    const Deadline now = Clock::now();
    Deadline next = Deadline::max();
    size_t closed = 0;
    for (auto& c : idle) {
      if (c->idle_deadline <= now) {
        c->stream->SendCloseNotify();
        c.reset();
        ++closed;
      } else {
        next = std::min(next, c->idle_deadline);
      }
    }
    if (closed > 0) {
      std::erase(idle, nullptr);
      std::lock_guard<std::mutex> lock(mu);
      connections -= closed;
    }

    fds.assign({{wake_fd.get(), POLLIN, 0},
                {listen_fd.get(), static_cast<short>(can_accept ? POLLIN : 0), 0}});
    for (const auto& c : idle) fds.push_back({c->fd.get(), POLLIN, 0});
    int timeout = -1;
    if (next != Deadline::max()) {
      timeout = static_cast<int>(std::min<int64_t>(
          std::chrono::ceil<std::chrono::milliseconds>(next - Clock::now()).count() + 1,
          INT32_MAX));
      timeout = std::max(timeout, 0);
    }
    if (poll(fds.data(), fds.size(), timeout) < 0) {
      if (errno == EINTR) continue;
      break;
    }
    if (fds[0].revents != 0) {
      uint64_t count;
      (void)!read(wake_fd.get(), &count, sizeof(count));
    }
    if (fds[1].revents != 0) AcceptReady();
    // Connections with a request (or an end of stream) go back to the workers.
    bool handed = false;
    {
      std::lock_guard<std::mutex> lock(mu);
      if (stopping) break;
      for (size_t i = 0; i < idle.size(); ++i) {
        if (fds[i + 2].revents != 0) {
          work.push_back(std::move(idle[i]));
          handed = true;
        }
      }
    }
    if (handed) {
      std::erase(idle, nullptr);
      cv.notify_all();
    }
  }
  // Shutdown: idle connections are closed here (the clients see the connection end).
  idle.clear();
}

void AtlsServer::Impl::WorkerLoop() {
  while (true) {
    std::unique_ptr<ServerConnection> connection;
    {
      std::unique_lock<std::mutex> lock(mu);
      cv.wait(lock, [&] { return stopping || !work.empty(); });
      if (stopping) return;
      connection = std::move(work.front());
      work.pop_front();
      // Registered under the same lock as the pop, so Shutdown always sees it.
      active.insert(connection->fd.get());
    }
    const Next next = Serve(*connection);
    if (next == Next::kLingerThenClose) {
      internal::LingerBeforeClose(connection->fd.get(), internal::kLinger);
    }
    bool wake = false;
    {
      std::lock_guard<std::mutex> lock(mu);
      active.erase(connection->fd.get());
      if (next == Next::kPark && !stopping) {
        connection->idle_deadline = Clock::now() + options.idle_timeout;
        parking.push_back(std::move(connection));
        wake = true;  // the poller watches it from now on
      } else {
        // At the bound the poller stopped accepting: tell it there is room again.
        wake = connections-- == options.max_connections;
      }
    }
    if (wake) Wake();
    // Otherwise closed here, after unregistering: Shutdown never touches a closed descriptor.
    connection.reset();
  }
}

AtlsServer::Impl::Next AtlsServer::Impl::Serve(ServerConnection& connection) {
  const int fd = connection.fd.get();
  if (connection.stream == nullptr) {
    auto stream =
        context->Handshake(fd, connection.address, Clock::now() + options.handshake_timeout);
    if (!stream.ok()) {
      if (options.on_handshake_failure && !Stopping()) {
        options.on_handshake_failure(connection.address, stream.status());
      }
      return Next::kLingerThenClose;  // let the alert reach the client
    }
    connection.stream = *std::move(stream);
  }
  AtlsStream& s = *connection.stream;
  // Serve requests while one is at hand; park the connection when it goes quiet.
  while (s.HasPendingData() || internal::ReadableWithin(fd, internal::kGrace)) {
    if (Stopping()) return Next::kClose;
    auto frame = internal::ReadFrame(s, options.max_frame_size, Clock::now() + options.io_timeout);
    if (!frame.ok()) {
      if (frame.status().code() == absl::StatusCode::kResourceExhausted) {
        (void)internal::WriteFrame(
            s, internal::EncodeRpcResponse(frame.status(), options.max_frame_size),
            Clock::now() + options.io_timeout);
        s.SendCloseNotify();
        return Next::kLingerThenClose;
      }
      if (frame.status().code() == absl::StatusCode::kDeadlineExceeded) s.SendCloseNotify();
      return Next::kClose;
    }
    if (!frame->has_value()) {  // the client closed the connection
      s.SendCloseNotify();
      return Next::kClose;
    }
    auto request = internal::DecodeRpcRequest(**frame);
    absl::StatusOr<std::string> result =
        request.ok() ? handler(request->method, request->body, s.peer()) : request.status();
    const std::string response = internal::EncodeRpcResponse(result, options.max_frame_size);
    if (!internal::WriteFrame(s, response, Clock::now() + options.io_timeout).ok()) {
      return Next::kClose;
    }
    if (!request.ok()) {
      s.SendCloseNotify();
      return Next::kLingerThenClose;  // malformed frames end the connection
    }
  }
  return Next::kPark;
}

AtlsServer::AtlsServer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

AtlsServer::~AtlsServer() { Shutdown(); }

absl::StatusOr<std::unique_ptr<AtlsServer>> AtlsServer::Start(AtlsServerOptions options,
                                                              AtlsHandler handler) {
  if (options.issuer == nullptr && options.client_validator == nullptr) {
    return InvalidArgumentError(
        "an aTLS server needs an issuer, a client_validator, or both (else nothing is attested)");
  }
  if (!handler) return InvalidArgumentError("an aTLS server needs a handler");
  if (options.worker_threads < 1 || options.worker_threads > 4096) {
    return InvalidArgumentError("worker_threads must be 1 to 4096, not {}", options.worker_threads);
  }
  if (options.max_connections < 1) return InvalidArgumentError("max_connections must be positive");
  if (options.handshake_timeout.count() <= 0 || options.io_timeout.count() <= 0 ||
      options.idle_timeout.count() <= 0) {
    return InvalidArgumentError("handshake_timeout, io_timeout and idle_timeout must be positive");
  }
  RETURN_IF_ERROR(internal::CheckFrameLimit(options.max_frame_size));

  auto impl = std::make_unique<Impl>();
  ASSIGN_OR_RETURN(impl->context, AtlsContext::NewServer(options.issuer, options.client_validator));
  ASSIGN_OR_RETURN(internal::Listening listening, internal::ListenTcp(options.host, options.port));
  impl->listen_fd = std::move(listening.fd);
  impl->port = listening.port;
  impl->wake_fd = UniqueFd(eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!impl->wake_fd.valid()) return InternalError("eventfd: {}", std::strerror(errno));
  impl->options = std::move(options);
  impl->handler = std::move(handler);

  Impl* raw = impl.get();
  for (int i = 0; i < raw->options.worker_threads; ++i) {
    raw->workers.emplace_back([raw] { raw->WorkerLoop(); });
  }
  raw->poller = std::thread([raw] { raw->PollLoop(); });
  return std::unique_ptr<AtlsServer>(new AtlsServer(std::move(impl)));
}

uint16_t AtlsServer::port() const { return impl_->port; }

std::string AtlsServer::endpoint() const {
  const std::string& host = impl_->options.host;
  if (host.find(':') != std::string::npos) return fmt::format("[{}]:{}", host, impl_->port);
  return fmt::format("{}:{}", host, impl_->port);
}

void AtlsServer::Shutdown() {
  std::lock_guard<std::mutex> shutdown_lock(impl_->shutdown_mu);
  if (impl_->joined) return;
  std::deque<std::unique_ptr<ServerConnection>> queued;
  std::vector<std::unique_ptr<ServerConnection>> returning;
  {
    std::lock_guard<std::mutex> lock(impl_->mu);
    impl_->stopping = true;
    // Wake every worker blocked on a socket: its reads and writes fail at once.
    for (const int fd : impl_->active) shutdown(fd, SHUT_RDWR);
    queued.swap(impl_->work);
    returning.swap(impl_->parking);
  }
  queued.clear();  // closes connections no worker has taken yet
  returning.clear();
  impl_->cv.notify_all();
  impl_->Wake();
  if (impl_->poller.joinable()) impl_->poller.join();
  for (std::thread& worker : impl_->workers) worker.join();
  impl_->listen_fd.Reset();
  impl_->joined = true;
}

// --- AtlsClient and AtlsConnection ------------------------------------------------------------

struct AtlsConnection::Impl {
  UniqueFd fd;  // declared before stream: closed after it is freed
  std::unique_ptr<AtlsStream> stream;
  size_t max_frame_size = 0;
  bool broken = false;

  ~Impl() {
    if (stream != nullptr && !broken) stream->SendCloseNotify();
  }

  absl::StatusOr<std::string> Call(std::string_view method, std::string_view request,
                                   Deadline deadline);
};

absl::StatusOr<std::string> AtlsConnection::Impl::Call(std::string_view method,
                                                       std::string_view request,
                                                       Deadline deadline) {
  if (broken) return UnavailableError("the aTLS connection was closed after an earlier error");
  ASSIGN_OR_RETURN(const std::string payload, internal::EncodeRpcRequest(method, request));
  if (payload.size() > max_frame_size) {
    return InvalidArgumentError("request of {} bytes exceeds the {}-byte frame limit",
                                payload.size(), max_frame_size);
  }
  if (absl::Status sent = internal::WriteFrame(*stream, payload, deadline); !sent.ok()) {
    broken = true;
    return sent;
  }
  auto frame = internal::ReadFrame(*stream, max_frame_size, deadline);
  if (!frame.ok()) {
    broken = true;
    if (frame.status().code() == absl::StatusCode::kResourceExhausted) {
      return MakeStatus(absl::StatusCode::kResourceExhausted, "response {}",
                        StatusMessage(frame.status()));
    }
    return frame.status();
  }
  if (!frame->has_value()) {
    broken = true;
    return UnavailableError("the server closed the connection without answering \"{}\"",
                            Printable(method));
  }
  auto response = internal::DecodeRpcResponse(**frame);
  if (!response.ok()) {
    broken = true;
    return response.status();
  }
  if (!response->status.ok()) return response->status;
  return std::move(response->body);
}

AtlsConnection::AtlsConnection(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
AtlsConnection::~AtlsConnection() = default;

const PeerInfo& AtlsConnection::peer() const { return impl_->stream->peer(); }

absl::StatusOr<std::string> AtlsConnection::Call(std::string_view method, std::string_view request,
                                                 std::chrono::milliseconds timeout) {
  return impl_->Call(method, request, Clock::now() + timeout);
}

struct AtlsClient::Impl {
  AtlsClientOptions options;
  std::unique_ptr<AtlsContext> context;

  absl::StatusOr<std::unique_ptr<AtlsConnection>> Connect(std::string_view endpoint,
                                                          Deadline deadline) const {
    ASSIGN_OR_RETURN(internal::Connected connected, internal::ConnectTcp(endpoint, deadline));
    auto conn = std::make_unique<AtlsConnection::Impl>();
    conn->fd = std::move(connected.fd);
    conn->max_frame_size = options.max_frame_size;
    ASSIGN_OR_RETURN(conn->stream,
                     context->Handshake(conn->fd.get(), std::move(connected.address), deadline));
    return std::unique_ptr<AtlsConnection>(new AtlsConnection(std::move(conn)));
  }
};

AtlsClient::AtlsClient(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
AtlsClient::~AtlsClient() = default;

absl::StatusOr<std::unique_ptr<AtlsClient>> AtlsClient::New(AtlsClientOptions options) {
  if (options.issuer == nullptr && options.server_validator == nullptr) {
    return InvalidArgumentError(
        "an aTLS client needs an issuer, a server_validator, or both (else nothing is attested)");
  }
  if (options.server_validator == nullptr && !options.accept_unattested_server) {
    return InvalidArgumentError(
        "an aTLS client without a server_validator must set accept_unattested_server");
  }
  RETURN_IF_ERROR(internal::CheckFrameLimit(options.max_frame_size));
  auto impl = std::make_unique<Impl>();
  ASSIGN_OR_RETURN(impl->context, AtlsContext::NewClient(options.issuer, options.server_validator));
  impl->options = std::move(options);
  return std::unique_ptr<AtlsClient>(new AtlsClient(std::move(impl)));
}

absl::StatusOr<std::unique_ptr<AtlsConnection>> AtlsClient::Connect(
    std::string_view endpoint, std::chrono::milliseconds timeout) const {
  return impl_->Connect(endpoint, Clock::now() + timeout);
}

absl::StatusOr<std::string> AtlsClient::Call(std::string_view endpoint, std::string_view method,
                                             std::string_view request,
                                             std::chrono::milliseconds timeout) const {
  const Deadline deadline = Clock::now() + timeout;
  ASSIGN_OR_RETURN(std::unique_ptr<AtlsConnection> connection, impl_->Connect(endpoint, deadline));
  return connection->impl_->Call(method, request, deadline);
}

}  // namespace keywarden::crypto
