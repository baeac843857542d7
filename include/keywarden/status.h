// Status helpers shared by every module.
//
// Keywarden reports recoverable errors with absl::Status / absl::StatusOr<T> (the abseil that
// Debian's gRPC links). Debian builds abseil with absl::string_view distinct from
// std::string_view, so the helpers here take std::string_view and fmt format strings and do the
// conversion in one place. Messages may name key IDs, sizes, paths and operations; they must
// never carry key bytes.
#pragma once

#include <fmt/format.h>

#include <string>
#include <string_view>
#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace keywarden {

namespace internal {
inline absl::string_view ToAbsl(std::string_view s) { return {s.data(), s.size()}; }
}  // namespace internal

// MakeStatus builds a non-OK status with a message formatted by fmt.
template <typename... Args>
absl::Status MakeStatus(absl::StatusCode code, fmt::format_string<Args...> format, Args&&... args) {
  std::string message = fmt::format(format, std::forward<Args>(args)...);
  return absl::Status(code, internal::ToAbsl(message));
}

template <typename... Args>
absl::Status InvalidArgumentError(fmt::format_string<Args...> f, Args&&... a) {
  return MakeStatus(absl::StatusCode::kInvalidArgument, f, std::forward<Args>(a)...);
}
template <typename... Args>
absl::Status NotFoundError(fmt::format_string<Args...> f, Args&&... a) {
  return MakeStatus(absl::StatusCode::kNotFound, f, std::forward<Args>(a)...);
}
template <typename... Args>
absl::Status AlreadyExistsError(fmt::format_string<Args...> f, Args&&... a) {
  return MakeStatus(absl::StatusCode::kAlreadyExists, f, std::forward<Args>(a)...);
}
template <typename... Args>
absl::Status FailedPreconditionError(fmt::format_string<Args...> f, Args&&... a) {
  return MakeStatus(absl::StatusCode::kFailedPrecondition, f, std::forward<Args>(a)...);
}
template <typename... Args>
absl::Status InternalError(fmt::format_string<Args...> f, Args&&... a) {
  return MakeStatus(absl::StatusCode::kInternal, f, std::forward<Args>(a)...);
}
template <typename... Args>
absl::Status UnavailableError(fmt::format_string<Args...> f, Args&&... a) {
  return MakeStatus(absl::StatusCode::kUnavailable, f, std::forward<Args>(a)...);
}
template <typename... Args>
absl::Status PermissionDeniedError(fmt::format_string<Args...> f, Args&&... a) {
  return MakeStatus(absl::StatusCode::kPermissionDenied, f, std::forward<Args>(a)...);
}

// Printable returns `text` fit to quote in a message (for public input such as IDs and
// UUIDs, never secrets): at most `max_chars` input bytes, printable ASCII kept, every other byte
// (control characters, escape sequences, non-ASCII, backslash) written as \xNN, and "..."
// appended when cut.
inline std::string Printable(std::string_view text, size_t max_chars = 64) {
  std::string out;
  for (size_t i = 0; i < text.size() && i < max_chars; ++i) {
    const unsigned char c = static_cast<unsigned char>(text[i]);
    if (c >= 0x20 && c < 0x7f && c != '\\') {
      out.push_back(static_cast<char>(c));
    } else {
      out += fmt::format("\\x{:02x}", c);
    }
  }
  if (text.size() > max_chars) out += "...";
  return out;
}

// StatusMessage returns a status's message as a std::string (for printing).
inline std::string StatusMessage(const absl::Status& status) {
  return std::string(status.message().data(), status.message().size());
}

}  // namespace keywarden

#define KW_STATUS_CONCAT_INNER_(a, b) a##b
#define KW_STATUS_CONCAT_(a, b) KW_STATUS_CONCAT_INNER_(a, b)

// RETURN_IF_ERROR(expr) returns the status of `expr` from the enclosing function if it is not OK.
#define RETURN_IF_ERROR(expr)                \
  do {                                       \
    ::absl::Status kw_status_ = (expr);      \
    if (!kw_status_.ok()) return kw_status_; \
  } while (false)

// ASSIGN_OR_RETURN(lhs, expr) evaluates a StatusOr expression, returns its status on error and
// otherwise moves the value into `lhs` (which may be a declaration: `auto x`).
#define ASSIGN_OR_RETURN(lhs, expr) \
  KW_ASSIGN_OR_RETURN_IMPL_(KW_STATUS_CONCAT_(kw_statusor_, __LINE__), lhs, expr)
#define KW_ASSIGN_OR_RETURN_IMPL_(tmp, lhs, expr) \
  auto tmp = (expr);                              \
  if (!tmp.ok()) return std::move(tmp).status();  \
  lhs = std::move(tmp).value()
