// The etcd v3 KV client (etcdserverpb.KV, proto/etcd.proto) of the etcd stores.
//
// Connections: one gRPC channel per endpoint, not one channel over all of them. A channel
// verifies the TLS server name against its own target's host, so with one channel per member
// every member is checked against its own name (an etcd member's certificate usually names
// only that member); a single channel over "ipv4:a,b,c" would check every member against one
// override name and break TLS exactly when it fails over. Failover is done here instead of by
// a gRPC load-balancing policy, which also lets an etcd-level refusal ("etcdserver: no
// leader", "leader changed", a member cut off from the quorum) move the call to another
// member, which no policy does.
//
// Each operation has one deadline (StoreOptions::timeout). Within it the store tries the
// member that answered last, then the others in turn, on UNAVAILABLE or a per-attempt
// DEADLINE_EXCEEDED, with a short pause after each full round (the first round fails fast on
// members known to be down, later rounds wait for a connection; see Call). Retrying is safe for
// the stores' operations: Range only reads, and their transactions are compare-and-swaps whose
// retry after an unseen success fails the compare and reads back what was written.
#include "src/store/etcd_kv.h"

#include <arpa/inet.h>
#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <chrono>
#include <fstream>
#include <iterator>
#include <sstream>
#include <string_view>
#include <thread>
#include <utility>

#include "keywarden/status.h"

namespace keywarden::store {
namespace {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

// Pause after every member failed once in a round: first and largest value.
constexpr milliseconds kFirstRoundPause{50};
constexpr milliseconds kMaxRoundPause{400};
// With several members, one attempt gets at most half of the remaining time (but at least
// this much), so one member that hangs (stopped, black-holed) leaves time for the others.
constexpr milliseconds kMinAttemptBudget{500};
// Channel tuning: reconnect quickly to a member that comes back (gRPC's default maximum
// backoff is 120 s); keepalive finds a connection to a vanished host. etcd accepts pings
// every 5 s or slower (--grpc-keepalive-min-time).
constexpr int kInitialReconnectBackoffMs = 200;
constexpr int kMaxReconnectBackoffMs = 1000;
constexpr int kKeepaliveTimeMs = 30000;
constexpr int kKeepaliveTimeoutMs = 10000;
constexpr int kDnsMinTimeBetweenResolutionsMs = 1000;

void WipeString(std::string* s) { SecureWipe(*s); }

std::string JoinEndpoints(const std::vector<std::string>& endpoints) {
  std::string out;
  for (const std::string& e : endpoints) {
    if (!out.empty()) out += ',';
    out += e;
  }
  return out;
}

std::string GrpcErrorText(const grpc::Status& status) {
  const std::string code =
      absl::StatusCodeToString(static_cast<absl::StatusCode>(status.error_code()));
  return code + ": " + Printable(status.error_message(), 300);
}

// IsRetryable says whether a failed attempt may succeed on another member or a little later:
// transport failures and etcd's own "unavailable" answers (no leader, leader changed, request
// timed out, server stopping), and a per-attempt deadline. etcd 3.4 answers some reads whose
// deadline ran out on the server (a follower waiting for a new leader) with UNKNOWN and Go's
// "context deadline exceeded"; those count as a deadline too. Everything else (permission
// denied, etcd's "database space exceeded", a corrupt member) is reported as it is.
bool IsRetryable(const grpc::Status& status) {
  switch (status.error_code()) {
    case grpc::StatusCode::UNAVAILABLE:
    case grpc::StatusCode::DEADLINE_EXCEEDED:
      return true;
    case grpc::StatusCode::UNKNOWN:
      return status.error_message() == "context deadline exceeded" ||
             status.error_message() == "context canceled";
    default:
      return false;
  }
}

}  // namespace

absl::Status ValidateEtcdEndpoint(std::string_view endpoint) {
  if (endpoint.find("://") != std::string::npos) {
    return InvalidArgumentError("etcd endpoint \"{}\" must be host:port, without a scheme",
                                Printable(endpoint));
  }
  const size_t colon = endpoint.rfind(':');
  if (colon == std::string::npos || colon == 0 || colon + 1 == endpoint.size() ||
      colon + 6 < endpoint.size()) {
    return InvalidArgumentError("etcd endpoint \"{}\" is not host:port", Printable(endpoint));
  }
  const std::string_view host(endpoint.data(), colon);
  const std::string_view port(endpoint.data() + colon + 1, endpoint.size() - colon - 1);
  unsigned port_number = 0;
  for (char c : port) {
    if (c < '0' || c > '9') {
      return InvalidArgumentError("etcd endpoint \"{}\" has a bad port", Printable(endpoint));
    }
    port_number = port_number * 10 + static_cast<unsigned>(c - '0');
  }
  if (port_number == 0 || port_number > 65535) {
    return InvalidArgumentError("etcd endpoint \"{}\" has a bad port", Printable(endpoint));
  }
  for (char c : host) {
    const unsigned char u = static_cast<unsigned char>(c);
    if (u <= 0x20 || u >= 0x7f || c == ',' || c == '/' || c == '?' || c == '#' || c == '@') {
      return InvalidArgumentError("etcd endpoint \"{}\" has a bad host", Printable(endpoint));
    }
  }
  return absl::OkStatus();
}

namespace {

// ChannelTarget returns the gRPC target for "host:port": "ipv4:" or "ipv6:" for an address
// literal (a fixed address, nothing to resolve), "dns:///" for a name.
std::string ChannelTarget(const std::string& endpoint) {
  const size_t colon = endpoint.rfind(':');
  const std::string host = endpoint.substr(0, colon);
  in_addr v4;
  if (inet_pton(AF_INET, host.c_str(), &v4) == 1) return "ipv4:" + endpoint;
  in6_addr v6;
  if (host.size() > 2 && host.front() == '[' && host.back() == ']' &&
      inet_pton(AF_INET6, host.substr(1, host.size() - 2).c_str(), &v6) == 1) {
    return "ipv6:" + endpoint;
  }
  return "dns:///" + endpoint;
}

// ReadPemFile reads a PEM file whose text must contain `marker` (e.g. "CERTIFICATE-----").
absl::StatusOr<std::string> ReadPemFile(const std::string& path, std::string_view what,
                                        std::string_view marker) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return InvalidArgumentError("cannot read the etcd {} file {}", what, Printable(path, 256));
  }
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (in.bad() || text.find("-----BEGIN ") == std::string::npos ||
      text.find(marker) == std::string::npos) {
    WipeString(&text);
    return InvalidArgumentError("the etcd {} file {} holds no PEM {}", what, Printable(path, 256),
                                what);
  }
  return text;
}

absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> MakeCredentials(
    const EtcdOptions& options) {
  if (options.ca_file.empty()) {
    if (!options.cert_file.empty() || !options.key_file.empty()) {
      return InvalidArgumentError(
          "an etcd client certificate (cert_file, key_file) needs TLS: set ca_file too");
    }
    return grpc::InsecureChannelCredentials();
  }
  if (options.cert_file.empty() != options.key_file.empty()) {
    return InvalidArgumentError("etcd cert_file and key_file must be given together");
  }
  grpc::SslCredentialsOptions ssl;
  ASSIGN_OR_RETURN(ssl.pem_root_certs,
                   ReadPemFile(options.ca_file, "CA certificate", "CERTIFICATE-----"));
  if (!options.cert_file.empty()) {
    ASSIGN_OR_RETURN(ssl.pem_cert_chain,
                     ReadPemFile(options.cert_file, "client certificate", "CERTIFICATE-----"));
    ASSIGN_OR_RETURN(ssl.pem_private_key,
                     ReadPemFile(options.key_file, "client key", "PRIVATE KEY-----"));
  }
  std::shared_ptr<grpc::ChannelCredentials> credentials = grpc::SslCredentials(ssl);
  // Security: the client's private key; gRPC has taken its own copy.
  WipeString(&ssl.pem_private_key);
  if (credentials == nullptr) return InternalError("cannot create TLS credentials for etcd");
  return credentials;
}

}  // namespace

void WipeEtcdRange(etcdserverpb::RangeResponse* response) {
  for (etcdserverpb::KeyValue& kv : *response->mutable_kvs()) WipeString(kv.mutable_value());
}

void WipeEtcdTxn(etcdserverpb::TxnResponse* response) {
  for (etcdserverpb::ResponseOp& op : *response->mutable_responses()) {
    if (op.has_response_range()) WipeEtcdRange(op.mutable_response_range());
  }
}

EtcdKv::EtcdKv(std::vector<std::string> endpoints,
               std::vector<std::shared_ptr<grpc::Channel>> channels, milliseconds timeout)
    : endpoints_(std::move(endpoints)),
      description_("etcd://" + JoinEndpoints(endpoints_)),
      channels_(std::move(channels)),
      timeout_(timeout) {
  for (const auto& channel : channels_) {
    stubs_.push_back(etcdserverpb::KV::NewStub(channel));
    watch_stubs_.push_back(etcdserverpb::Watch::NewStub(channel));
  }
}

// Call runs `rpc(stub, context)` until it succeeds, fails for good, or the timeout passes
// (see the top of this file).
template <typename Rpc>
absl::Status EtcdKv::Call(std::string_view operation, Rpc&& rpc) {
  const size_t n = stubs_.size();
  const Clock::time_point deadline = Clock::now() + timeout_;
  std::vector<std::string> last_errors(n);
  size_t index = preferred_.load(std::memory_order_relaxed) % n;
  size_t failed_in_round = 0;
  int round = 0;
  milliseconds pause = kFirstRoundPause;
  for (;;) {
    const Clock::time_point now = Clock::now();
    if (now >= deadline) break;
    auto budget = std::chrono::duration_cast<milliseconds>(deadline - now);
    if (n > 1) budget = std::min(budget, std::max(budget / 2, kMinAttemptBudget));
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + budget);
    // First round fail-fast: a member whose channel is down is skipped at once. Later rounds
    // wait for the channel to connect (within the attempt's budget): a synchronous gRPC
    // client only makes progress on a reconnection while some call polls, and a fail-fast
    // call on a channel in TRANSIENT_FAILURE polls nothing, so without waiting a restarted
    // member would be noticed only by gRPC's 5 s backup poller.
    context.set_wait_for_ready(round > 0);
    const grpc::Status status = rpc(*stubs_[index], &context);
    if (status.ok()) {
      preferred_.store(index, std::memory_order_relaxed);
      return absl::OkStatus();
    }
    if (!IsRetryable(status)) {
      return MakeStatus(static_cast<absl::StatusCode>(status.error_code()),
                        "etcd at {} refused {}: {}", endpoints_[index], operation,
                        GrpcErrorText(status));
    }
    // Keep the most telling error per member: a waiting attempt that runs out of time says
    // less than the connection error seen before it.
    if (last_errors[index].empty() || status.error_code() != grpc::StatusCode::DEADLINE_EXCEEDED) {
      last_errors[index] = GrpcErrorText(status);
    }
    index = (index + 1) % n;
    if (++failed_in_round == n) {
      failed_in_round = 0;
      ++round;
      const auto left = deadline - Clock::now();
      if (left <= Clock::duration::zero()) break;
      std::this_thread::sleep_for(std::min<Clock::duration>(pause, left));
      pause = std::min(pause * 2, kMaxRoundPause);
    }
  }
  std::string details;
  for (size_t i = 0; i < n; ++i) {
    if (last_errors[i].empty()) continue;
    if (!details.empty()) details += "; ";
    details += endpoints_[i] + ": " + last_errors[i];
  }
  if (details.empty()) details = "no attempt finished";
  return UnavailableError("etcd at {} unreachable: {} did not succeed within {} ms ({})",
                          JoinEndpoints(endpoints_), operation, timeout_.count(), details);
}

absl::Status EtcdKv::Range(const etcdserverpb::RangeRequest& request,
                           etcdserverpb::RangeResponse* response) {
  return Call("Range", [&](etcdserverpb::KV::Stub& stub, grpc::ClientContext* context) {
    return stub.Range(context, request, response);
  });
}

absl::Status EtcdKv::Txn(const etcdserverpb::TxnRequest& request,
                         etcdserverpb::TxnResponse* response) {
  return Call("Txn", [&](etcdserverpb::KV::Stub& stub, grpc::ClientContext* context) {
    return stub.Txn(context, request, response);
  });
}

absl::Status EtcdKv::Ping(const std::string& key) {
  etcdserverpb::RangeRequest request;
  request.set_key(key);
  request.set_serializable(true);
  request.set_count_only(true);
  etcdserverpb::RangeResponse response;
  return Call("reachability check",
              [&](etcdserverpb::KV::Stub& stub, grpc::ClientContext* context) {
                return stub.Range(context, request, &response);
              });
}

absl::Status EtcdKv::Put(const etcdserverpb::PutRequest& request,
                         etcdserverpb::PutResponse* response) {
  return Call("Put", [&](etcdserverpb::KV::Stub& stub, grpc::ClientContext* context) {
    return stub.Put(context, request, response);
  });
}

absl::Status EtcdKv::DeleteRange(const etcdserverpb::DeleteRangeRequest& request,
                                 etcdserverpb::DeleteRangeResponse* response) {
  return Call("DeleteRange", [&](etcdserverpb::KV::Stub& stub, grpc::ClientContext* context) {
    return stub.DeleteRange(context, request, response);
  });
}

absl::Status EtcdKv::Compact(int64_t revision, bool physical) {
  etcdserverpb::CompactionRequest request;
  request.set_revision(revision);
  request.set_physical(physical);
  etcdserverpb::CompactionResponse response;
  return Call("Compact", [&](etcdserverpb::KV::Stub& stub, grpc::ClientContext* context) {
    return stub.Compact(context, request, &response);
  });
}

// ---- Watch ----
//
// The synchronous streaming API blocks in Read; a small thread per stream cancels the call
// (ClientContext::TryCancel) when `stop` is set or when the watch was not created by the
// attempt's deadline, so a stopped or unreachable member never holds the caller longer than
// about 50 ms past either. After a cancellation the stream is drained before Finish, as gRPC's
// synchronous API requires.

// kWatchStopPoll is how often the canceller thread looks at `stop`.
constexpr milliseconds kWatchStopPoll{50};

struct EtcdKv::WatchAttempt {
  enum class End { kStopped, kError, kRetry } end = End::kRetry;
  absl::Status status;       // kError: the error; kRetry: what went wrong (for the message)
  bool established = false;  // the watch was created (a member served it)
  int64_t next_revision = 0;
};

EtcdKv::WatchAttempt EtcdKv::WatchOnce(size_t index, const std::string& key,
                                       const std::string& range_end, int64_t start_revision,
                                       bool wait_for_ready, Clock::time_point connect_deadline,
                                       const WatchHandler& on_events,
                                       const std::atomic<bool>& stop) {
  WatchAttempt out;
  out.next_revision = start_revision;
  grpc::ClientContext context;
  // Without this etcd keeps a watch open on a member that lost its leader (and so sees no new
  // revisions); with it the member ends the stream (UNAVAILABLE, "no leader") and Watch moves on.
  context.AddMetadata("hasleader", "true");
  context.set_wait_for_ready(wait_for_ready);
  std::atomic<bool> established{false};
  std::atomic<bool> done{false};
  std::atomic<bool> timed_out{false};
  std::thread canceller([&] {
    while (!done.load()) {
      if (stop.load()) {
        context.TryCancel();
        return;
      }
      if (!established.load() && Clock::now() >= connect_deadline) {
        timed_out.store(true);
        context.TryCancel();
        return;
      }
      std::this_thread::sleep_for(kWatchStopPoll);
    }
  });

  auto stream = watch_stubs_[index]->Watch(&context);
  etcdserverpb::WatchRequest request;
  etcdserverpb::WatchCreateRequest* create = request.mutable_create_request();
  create->set_key(key);
  create->set_range_end(range_end);
  create->set_start_revision(start_revision);
  bool open = stream->Write(request);
  etcdserverpb::WatchResponse response;
  while (open && stream->Read(&response)) {
    if (response.created()) {
      if (response.canceled()) {
        out.end = WatchAttempt::End::kError;
        out.status = FailedPreconditionError("etcd at {} refused the watch: {}", endpoints_[index],
                                             Printable(response.cancel_reason(), 300));
        break;
      }
      established.store(true);
      out.established = true;
      preferred_.store(index, std::memory_order_relaxed);
      continue;
    }
    if (response.compact_revision() != 0) {
      out.end = WatchAttempt::End::kError;
      out.status = MakeStatus(absl::StatusCode::kOutOfRange,
                              "etcd compacted its history past revision {} (kept from {})",
                              out.next_revision, response.compact_revision());
      break;
    }
    if (response.canceled()) {
      out.end = WatchAttempt::End::kRetry;
      out.status = UnavailableError("etcd at {} cancelled the watch: {}", endpoints_[index],
                                    Printable(response.cancel_reason(), 300));
      break;
    }
    if (response.events_size() == 0) continue;  // a progress notification
    const bool more = on_events(response);
    const auto& last = response.events(response.events_size() - 1);
    out.next_revision = std::max(out.next_revision, last.kv().mod_revision() + 1);
    if (!more) {
      out.end = WatchAttempt::End::kStopped;
      break;
    }
  }
  context.TryCancel();
  while (stream->Read(&response)) {
  }
  const grpc::Status status = stream->Finish();
  done.store(true);
  canceller.join();
  if (out.end != WatchAttempt::End::kRetry || !out.status.ok()) return out;
  if (stop.load()) {
    out.end = WatchAttempt::End::kStopped;
    return out;
  }
  if (timed_out.load()) {
    out.status = UnavailableError("{}: no watch within the attempt's time", endpoints_[index]);
    return out;
  }
  if (status.ok() || IsRetryable(status) || status.error_code() == grpc::StatusCode::CANCELLED) {
    out.status = UnavailableError("{}", GrpcErrorText(status));
    return out;
  }
  out.end = WatchAttempt::End::kError;
  out.status =
      MakeStatus(static_cast<absl::StatusCode>(status.error_code()),
                 "etcd at {} refused the watch: {}", endpoints_[index], GrpcErrorText(status));
  return out;
}

absl::Status EtcdKv::Watch(const std::string& key, const std::string& range_end,
                           int64_t start_revision, const WatchHandler& on_events,
                           const std::atomic<bool>& stop) {
  const size_t n = watch_stubs_.size();
  size_t index = preferred_.load(std::memory_order_relaxed) % n;
  int64_t next = start_revision;
  std::vector<std::string> last_errors(n);
  Clock::time_point deadline = Clock::now() + timeout_;
  size_t failed_in_round = 0;
  int round = 0;
  milliseconds pause = kFirstRoundPause;
  while (!stop.load()) {
    const Clock::time_point now = Clock::now();
    if (now >= deadline) break;
    auto budget = std::chrono::duration_cast<milliseconds>(deadline - now);
    if (n > 1) budget = std::min(budget, std::max(budget / 2, kMinAttemptBudget));
    WatchAttempt attempt =
        WatchOnce(index, key, range_end, next, round > 0, now + budget, on_events, stop);
    next = attempt.next_revision;
    if (attempt.end == WatchAttempt::End::kStopped) return absl::OkStatus();
    if (attempt.end == WatchAttempt::End::kError) return attempt.status;
    last_errors[index] = StatusMessage(attempt.status);
    if (attempt.established) {
      // The watch ran and then broke: a fresh deadline for finding another member.
      deadline = Clock::now() + timeout_;
      failed_in_round = 0;
      round = 0;
      pause = kFirstRoundPause;
      std::fill(last_errors.begin(), last_errors.end(), std::string());
      last_errors[index] = StatusMessage(attempt.status);
    }
    index = (index + 1) % n;
    if (++failed_in_round >= n) {
      failed_in_round = 0;
      ++round;
      const auto left = deadline - Clock::now();
      if (left <= Clock::duration::zero()) break;
      std::this_thread::sleep_for(std::min<Clock::duration>(pause, left));
      pause = std::min(pause * 2, kMaxRoundPause);
    }
  }
  if (stop.load()) return absl::OkStatus();
  std::string details;
  for (size_t i = 0; i < n; ++i) {
    if (last_errors[i].empty()) continue;
    if (!details.empty()) details += "; ";
    details += endpoints_[i] + ": " + last_errors[i];
  }
  if (details.empty()) details = "no attempt finished";
  return UnavailableError("etcd at {} unreachable: no member took the watch within {} ms ({})",
                          JoinEndpoints(endpoints_), timeout_.count(), details);
}

absl::StatusOr<std::unique_ptr<EtcdKv>> EtcdKv::Connect(const EtcdOptions& options) {
  if (options.endpoints.empty()) return InvalidArgumentError("no etcd endpoint given");
  for (const std::string& endpoint : options.endpoints)
    RETURN_IF_ERROR(ValidateEtcdEndpoint(endpoint));
  if (options.store.timeout <= milliseconds::zero()) {
    return InvalidArgumentError("etcd timeout must be positive, not {} ms",
                                options.store.timeout.count());
  }
  ASSIGN_OR_RETURN(std::shared_ptr<grpc::ChannelCredentials> credentials, MakeCredentials(options));

  grpc::ChannelArguments args;
  // A channel of its own per store: without this, gRPC shares connections between channels
  // with equal arguments process-wide, and two stores would fail together.
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, kInitialReconnectBackoffMs);
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, kMaxReconnectBackoffMs);
  args.SetInt(GRPC_ARG_KEEPALIVE_TIME_MS, kKeepaliveTimeMs);
  args.SetInt(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, kKeepaliveTimeoutMs);
  // gRPC re-resolves a name when a connection drops, by default at most every 30 s; a member
  // that comes back under a new address (a rescheduled pod) is found sooner this way. Address
  // literals skip DNS altogether (see ChannelTarget).
  args.SetInt(GRPC_ARG_DNS_MIN_TIME_BETWEEN_RESOLUTIONS_MS, kDnsMinTimeBetweenResolutionsMs);
  std::vector<std::shared_ptr<grpc::Channel>> channels;
  for (const std::string& endpoint : options.endpoints) {
    grpc::ChannelArguments channel_args = args;
    // The authority, whose host part is the name TLS checks the member's certificate against.
    channel_args.SetString(GRPC_ARG_DEFAULT_AUTHORITY, endpoint);
    auto channel = grpc::CreateCustomChannel(ChannelTarget(endpoint), credentials, channel_args);
    channel->GetState(/*try_to_connect=*/true);
    channels.push_back(std::move(channel));
  }
  return std::unique_ptr<EtcdKv>(
      new EtcdKv(options.endpoints, std::move(channels), options.store.timeout));
}

}  // namespace keywarden::store
