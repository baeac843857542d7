#include "keywarden/keys/master_secret.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <map>
#include <nlohmann/json.hpp>
#include <string_view>
#include <vector>

#include "keywarden/crypto/encoding.h"
#include "keywarden/crypto/random.h"
#include "keywarden/secure_allocator.h"
#include "keywarden/status.h"

namespace keywarden::keys {
namespace {

// The parser's strings (object keys and values, and its token buffer) are SecureStrings, so
// the base64 text of the key is kept in locked memory and wiped when the parse ends.
using SecureJson = nlohmann::basic_json<std::map, std::vector, SecureString>;

// SyntaxProbe is a SAX handler that accepts everything and records where a syntax error
// occurred, so that an error can say "truncated" without quoting the input (the parser's own
// error text quotes the last token, which may be part of the key).
class SyntaxProbe : public nlohmann::json_sax<SecureJson> {
 public:
  bool null() override { return true; }
  bool boolean(bool) override { return true; }
  bool number_integer(number_integer_t) override { return true; }
  bool number_unsigned(number_unsigned_t) override { return true; }
  bool number_float(number_float_t, const string_t&) override { return true; }
  bool string(string_t&) override { return true; }
  bool binary(binary_t&) override { return true; }
  bool start_object(std::size_t) override { return true; }
  bool key(string_t&) override { return true; }
  bool end_object() override { return true; }
  bool start_array(std::size_t) override { return true; }
  bool end_array() override { return true; }
  bool parse_error(std::size_t position, const std::string&,
                   const nlohmann::detail::exception&) override {
    error_position_ = position;
    return false;
  }
  size_t error_position() const { return error_position_; }

 private:
  size_t error_position_ = 0;
};

bool IsJsonWhitespace(uint8_t c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }

// SyntaxError describes why `json` does not parse, without quoting it.
absl::Status SyntaxError(std::span<const uint8_t> json) {
  if (std::all_of(json.begin(), json.end(), IsJsonWhitespace)) {
    return InvalidArgumentError("master secret: file is empty");
  }
  SyntaxProbe probe;
  // SecureJson::sax_parse would also instantiate nlohmann's binary readers, which do not
  // support a custom string type; its JSON branch is exactly this parser.
  auto adapter = nlohmann::detail::input_adapter(json.begin(), json.end());
  nlohmann::detail::parser<SecureJson, decltype(adapter)> parser(std::move(adapter), nullptr,
                                                                 /*allow_exceptions_=*/false);
  if (parser.sax_parse(&probe, /*strict=*/true)) {
    return InvalidArgumentError("master secret: not valid JSON");
  }
  // The lexer reports the position just past the offending character; at the end of the
  // input that means the document stopped early.
  if (probe.error_position() >= json.size()) {
    return InvalidArgumentError("master secret: JSON ends early (truncated file?)");
  }
  return InvalidArgumentError("master secret: not valid JSON (syntax error at byte {})",
                              probe.error_position());
}

absl::StatusOr<SecretBytes> DecodeField(const SecureJson& object, const char* name,
                                        size_t min_size) {
  auto it = object.find(name);
  if (it == object.end()) {
    return InvalidArgumentError("master secret: missing field \"{}\"", name);
  }
  if (!it->is_string()) {
    return InvalidArgumentError("master secret: field \"{}\" is not a string", name);
  }
  const SecureString& text = it->template get_ref<const SecureString&>();
  auto decoded = crypto::Base64DecodeSecret(std::string_view(text.data(), text.size()));
  if (!decoded.ok()) {
    return InvalidArgumentError("master secret: field \"{}\" is not valid base64: {}", name,
                                StatusMessage(decoded.status()));
  }
  if (decoded->size() < min_size) {
    return InvalidArgumentError("master secret: {} is {} bytes; at least {} are required", name,
                                decoded->size(), min_size);
  }
  return std::move(decoded).value();
}

std::string ErrnoText(int err) { return std::strerror(err); }

absl::Status FileError(int err, std::string_view what, const std::filesystem::path& path) {
  const std::string message = fmt::format("cannot {} {}: {}", what, path.string(), ErrnoText(err));
  switch (err) {
    case ENOENT:
      return absl::NotFoundError(internal::ToAbsl(message));
    case EACCES:
    case EPERM:
      return absl::PermissionDeniedError(internal::ToAbsl(message));
    case EEXIST:
      return absl::AlreadyExistsError(internal::ToAbsl(message));
    default:
      return absl::FailedPreconditionError(internal::ToAbsl(message));
  }
}

}  // namespace

absl::StatusOr<MasterSecret> MasterSecret::Generate() {
  ASSIGN_OR_RETURN(SecretBytes key, crypto::RandomSecret(kDefaultMasterKeySize));
  ASSIGN_OR_RETURN(SecretBytes salt, crypto::RandomSecret(kSaltSize));
  return MasterSecret{std::move(key), std::move(salt)};
}

absl::StatusOr<MasterSecret> ParseMasterSecretJson(std::span<const uint8_t> json) {
  // allow_exceptions = false: a syntax error yields a "discarded" value instead of throwing.
  SecureJson doc = SecureJson::parse(json.begin(), json.end(), nullptr, false);
  if (doc.is_discarded()) return SyntaxError(json);
  if (!doc.is_object()) return InvalidArgumentError("master secret: JSON is not an object");
  ASSIGN_OR_RETURN(SecretBytes key, DecodeField(doc, "key", kMinMasterKeySize));
  ASSIGN_OR_RETURN(SecretBytes salt, DecodeField(doc, "salt", kMinSaltSize));
  return MasterSecret{std::move(key), std::move(salt)};
}

SecretBytes SerializeMasterSecretJson(const MasterSecret& secret) {
  const auto token = InsecureSecretAccess::Get();
  const SecretBytes key = crypto::Base64EncodeSecret(secret.key);
  const SecretBytes salt = crypto::Base64EncodeSecret(secret.salt);
  static constexpr std::string_view kOpen = "{\n\t\"key\": \"";
  static constexpr std::string_view kMiddle = "\",\n\t\"salt\": \"";
  static constexpr std::string_view kClose = "\"\n}";
  SecretBytes out(kOpen.size() + key.size() + kMiddle.size() + salt.size() + kClose.size());
  uint8_t* p = out.MutableReveal(token).data();
  auto put = [&p](std::span<const uint8_t> bytes) {
    std::memcpy(p, bytes.data(), bytes.size());
    p += bytes.size();
  };
  auto text = [](std::string_view s) {
    return std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(s.data()), s.size());
  };
  put(text(kOpen));
  put(key.Reveal(token));
  put(text(kMiddle));
  put(salt.Reveal(token));
  put(text(kClose));
  return out;
}

absl::StatusOr<MasterSecret> ReadMasterSecretFile(const std::filesystem::path& path) {
  const int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOCTTY);
  if (fd < 0) return FileError(errno, "open master secret file", path);
  struct stat st {};
  if (fstat(fd, &st) != 0) {
    const int err = errno;
    close(fd);
    return FileError(err, "stat master secret file", path);
  }
  if (!S_ISREG(st.st_mode)) {
    close(fd);
    return InvalidArgumentError("master secret file {} is not a regular file", path.string());
  }
  if (static_cast<size_t>(st.st_size) > kMaxMasterSecretFileSize) {
    close(fd);
    return InvalidArgumentError("master secret file {} is {} bytes; at most {} expected",
                                path.string(), st.st_size, kMaxMasterSecretFileSize);
  }
  SecretBytes buffer(kMaxMasterSecretFileSize + 1);
  uint8_t* data = buffer.MutableReveal(InsecureSecretAccess::Get()).data();
  size_t size = 0;
  while (size < buffer.size()) {
    const ssize_t n = read(fd, data + size, buffer.size() - size);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      const int err = errno;
      close(fd);
      return FileError(err, "read master secret file", path);
    }
    if (n == 0) break;
    size += static_cast<size_t>(n);
  }
  close(fd);
  if (size > kMaxMasterSecretFileSize) {
    return InvalidArgumentError("master secret file {} grew beyond {} bytes", path.string(),
                                kMaxMasterSecretFileSize);
  }
  auto parsed = ParseMasterSecretJson(buffer.Reveal(InsecureSecretAccess::Get()).first(size));
  if (!parsed.ok()) {
    return absl::Status(
        parsed.status().code(),
        internal::ToAbsl(fmt::format("{}: {}", path.string(), StatusMessage(parsed.status()))));
  }
  return parsed;
}

absl::Status WriteMasterSecretFile(const std::filesystem::path& path, const MasterSecret& secret) {
  if (secret.key.size() < kMinMasterKeySize || secret.salt.size() < kMinSaltSize) {
    return InvalidArgumentError("master secret too short to write (key {} bytes, salt {} bytes)",
                                secret.key.size(), secret.salt.size());
  }
  const SecretBytes contents = SerializeMasterSecretJson(secret);
  const int fd = open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
  if (fd < 0) return FileError(errno, "create master secret file", path);
  auto fail = [&](int err, std::string_view what) {
    close(fd);
    unlink(path.c_str());
    return FileError(err, what, path);
  };
  // The umask can only remove bits; set 0600 explicitly in case the file system ignores mode.
  if (fchmod(fd, 0600) != 0) return fail(errno, "chmod master secret file");
  const auto bytes = contents.Reveal(InsecureSecretAccess::Get());
  size_t done = 0;
  while (done < bytes.size()) {
    const ssize_t n = write(fd, bytes.data() + done, bytes.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return fail(errno, "write master secret file");
    done += static_cast<size_t>(n);
  }
  if (fsync(fd) != 0) return fail(errno, "sync master secret file");
  if (close(fd) != 0) {
    const int err = errno;
    unlink(path.c_str());
    return FileError(err, "close master secret file", path);
  }
  return absl::OkStatus();
}

}  // namespace keywarden::keys
