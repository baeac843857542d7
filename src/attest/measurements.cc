#include "keywarden/attest/measurements.h"

#include <yaml.h>

#include <algorithm>
#include <nlohmann/json.hpp>
#include <set>
#include <utility>

#include "keywarden/crypto/encoding.h"
#include "keywarden/status.h"

namespace keywarden::attest {
namespace {

constexpr std::string_view kExpected = "expected";
constexpr std::string_view kWarnOnly = "warnOnly";

// Builder collects measurements from either parser's events and enforces the format's rules,
// so that JSON and YAML accept exactly the same documents.
class Builder {
 public:
  explicit Builder(std::string_view format) : format_(format) {}

  absl::Status StartEntry(std::string_view key) {
    // Canonical decimal only: "7", never "07", "+7", " 7" or "7.0" (each would be a second
    // spelling of one PCR that a reviewer reading the file could miss).
    const bool digits =
        !key.empty() && key.size() <= 2 &&
        std::all_of(key.begin(), key.end(), [](char c) { return c >= '0' && c <= '9'; });
    if (!digits || (key.size() > 1 && key[0] == '0')) {
      return Error("key \"{}\" is not a PCR index (0-{} in decimal)", Printable(key, 16),
                   kMaxMeasurementIndex);
    }
    uint32_t index = 0;
    for (char c : key) index = index * 10 + static_cast<uint32_t>(c - '0');
    if (index > kMaxMeasurementIndex) {
      return Error("PCR index {} is above {}", index, kMaxMeasurementIndex);
    }
    if (measurements_.contains(index)) return Error("PCR {} is listed twice", index);
    index_ = index;
    current_ = Measurement{};
    has_expected_ = has_warn_only_ = false;
    return absl::OkStatus();
  }

  // Field checks a field name inside an entry and returns which one it is.
  absl::StatusOr<std::string_view> Field(std::string_view name) {
    if (name == kExpected) {
      if (has_expected_) return Error("PCR {}: \"expected\" is given twice", index_);
      return kExpected;
    }
    if (name == kWarnOnly) {
      if (has_warn_only_) return Error("PCR {}: \"warnOnly\" is given twice", index_);
      return kWarnOnly;
    }
    return Error("PCR {}: unknown field \"{}\" (want \"expected\" and \"warnOnly\")", index_,
                 Printable(name, 32));
  }

  absl::Status SetExpected(std::string_view hex) {
    if (hex.size() != 2 * kPcrSize) {
      return Error(
          "PCR {}: \"expected\" must be {} hex digits (a SHA-256 PCR value), got {} "
          "characters",
          index_, 2 * kPcrSize, hex.size());
    }
    auto bytes = crypto::HexDecode(hex);
    if (!bytes.ok()) return Error("PCR {}: \"expected\" is not hex", index_);
    std::copy(bytes->begin(), bytes->end(), current_.expected.begin());
    has_expected_ = true;
    return absl::OkStatus();
  }

  void SetWarnOnly(bool value) {
    current_.warn_only = value;
    has_warn_only_ = true;
  }

  absl::Status EndEntry() {
    if (!has_expected_) return Error("PCR {}: \"expected\" is missing", index_);
    measurements_.emplace(index_, current_);
    return absl::OkStatus();
  }

  absl::StatusOr<Measurements> Finish() {
    if (measurements_.empty()) {
      return Error("no PCR is measured (an empty set would accept any node)");
    }
    return std::move(measurements_);
  }

  uint32_t index() const { return index_; }

  template <typename... Args>
  absl::Status Error(fmt::format_string<Args...> f, Args&&... args) const {
    return InvalidArgumentError("measurements ({}): {}", format_,
                                fmt::format(f, std::forward<Args>(args)...));
  }

 private:
  std::string_view format_;
  Measurements measurements_;
  uint32_t index_ = 0;
  Measurement current_;
  bool has_expected_ = false;
  bool has_warn_only_ = false;
};

// JsonHandler drives a Builder from nlohmann's SAX events. Depth 0 is outside everything,
// 1 inside the top object, 2 inside one PCR's object.
class JsonHandler : public nlohmann::json_sax<nlohmann::json> {
 public:
  explicit JsonHandler(Builder& builder) : builder_(builder) {}

  bool null() override { return Value("null"); }
  bool boolean(bool value) override {
    if (depth_ == 2 && field_ == kWarnOnly) {
      builder_.SetWarnOnly(value);
      field_ = {};
      return true;
    }
    return Value("a boolean");
  }
  bool number_integer(number_integer_t) override { return Value("a number"); }
  bool number_unsigned(number_unsigned_t) override { return Value("a number"); }
  bool number_float(number_float_t, const string_t&) override { return Value("a number"); }
  bool binary(binary_t&) override { return Value("binary"); }
  bool string(string_t& value) override {
    if (depth_ == 2 && field_ == kExpected) {
      field_ = {};
      return Check(builder_.SetExpected(value));
    }
    return Value("a string");
  }
  bool start_object(std::size_t) override {
    if (depth_ == 0 && !done_) {
      depth_ = 1;
      return true;
    }
    if (depth_ == 1 && pending_key_) {
      pending_key_ = false;
      depth_ = 2;
      return true;
    }
    return Value("an object");
  }
  bool key(string_t& name) override {
    if (depth_ == 1) {
      pending_key_ = true;
      return Check(builder_.StartEntry(name));
    }
    auto field = builder_.Field(name);
    if (!field.ok()) return Check(field.status());
    field_ = *field;
    return true;
  }
  bool end_object() override {
    if (depth_ == 2) {
      depth_ = 1;
      return Check(builder_.EndEntry());
    }
    depth_ = 0;
    done_ = true;
    return true;
  }
  bool start_array(std::size_t) override { return Value("an array"); }
  bool end_array() override { return Value("an array"); }
  bool parse_error(std::size_t position, const std::string&,
                   const nlohmann::detail::exception&) override {
    if (status_.ok()) {
      status_ = builder_.Error("not valid JSON (syntax error at byte {})", position);
    }
    return false;
  }

  const absl::Status& status() const { return status_; }

 private:
  // Value reports a value of the wrong kind in the current position.
  bool Value(std::string_view kind) {
    if (depth_ == 0) {
      return Check(builder_.Error("the document must be a JSON object, not {}", kind));
    }
    if (depth_ == 1) {
      return Check(builder_.Error(
          "PCR {}: value must be an object {{\"expected\": ..., \"warnOnly\": ...}}, not {} "
          "(Constellation's legacy string form is not accepted)",
          builder_.index(), kind));
    }
    if (field_ == kWarnOnly) {
      return Check(
          builder_.Error("PCR {}: \"warnOnly\" must be a boolean, not {}", builder_.index(), kind));
    }
    return Check(
        builder_.Error("PCR {}: \"expected\" must be a string, not {}", builder_.index(), kind));
  }
  bool Check(absl::Status status) {
    if (status.ok()) return true;
    if (status_.ok()) status_ = std::move(status);
    return false;
  }

  Builder& builder_;
  int depth_ = 0;
  bool done_ = false;
  bool pending_key_ = false;
  std::string_view field_;
  absl::Status status_;
};

// YamlEvent owns one libyaml event.
class YamlEvent {
 public:
  YamlEvent() = default;
  ~YamlEvent() {
    if (valid_) yaml_event_delete(&event_);
  }
  YamlEvent(const YamlEvent&) = delete;
  YamlEvent& operator=(const YamlEvent&) = delete;

  bool Next(yaml_parser_t* parser) {
    if (valid_) yaml_event_delete(&event_);
    valid_ = yaml_parser_parse(parser, &event_) == 1;
    return valid_;
  }
  const yaml_event_t& get() const { return event_; }
  yaml_event_type_t type() const { return event_.type; }
  std::string_view scalar() const {
    return {reinterpret_cast<const char*>(event_.data.scalar.value), event_.data.scalar.length};
  }
  bool plain() const { return event_.data.scalar.style == YAML_PLAIN_SCALAR_STYLE; }
  // decorated reports an anchor or an explicit tag, which this format never needs.
  bool decorated() const {
    switch (event_.type) {
      case YAML_SCALAR_EVENT:
        return event_.data.scalar.anchor != nullptr || event_.data.scalar.tag != nullptr;
      case YAML_MAPPING_START_EVENT:
        return event_.data.mapping_start.anchor != nullptr ||
               event_.data.mapping_start.tag != nullptr;
      case YAML_SEQUENCE_START_EVENT:
        return event_.data.sequence_start.anchor != nullptr ||
               event_.data.sequence_start.tag != nullptr;
      default:
        return false;
    }
  }

 private:
  yaml_event_t event_{};
  bool valid_ = false;
};

class YamlParser {
 public:
  explicit YamlParser(std::string_view text) {
    ok_ = yaml_parser_initialize(&parser_) == 1;
    if (ok_) {
      yaml_parser_set_input_string(&parser_, reinterpret_cast<const unsigned char*>(text.data()),
                                   text.size());
    }
  }
  ~YamlParser() {
    if (ok_) yaml_parser_delete(&parser_);
  }
  YamlParser(const YamlParser&) = delete;
  YamlParser& operator=(const YamlParser&) = delete;

  // Next reads the next event; a syntax error, alias or decoration is an error.
  absl::Status Next(const Builder& builder) {
    if (!ok_) return InternalError("cannot initialize the YAML parser");
    if (!event_.Next(&parser_)) {
      return builder.Error("not valid YAML ({} at line {})",
                           parser_.problem != nullptr ? parser_.problem : "syntax error",
                           parser_.problem_mark.line + 1);
    }
    if (event_.type() == YAML_ALIAS_EVENT || event_.decorated()) {
      return builder.Error("YAML anchors, aliases and tags are not accepted (line {})",
                           event_.get().start_mark.line + 1);
    }
    return absl::OkStatus();
  }
  const YamlEvent& event() const { return event_; }

 private:
  yaml_parser_t parser_{};
  bool ok_ = false;
  YamlEvent event_;
};

std::string_view YamlKind(yaml_event_type_t type) {
  switch (type) {
    case YAML_SCALAR_EVENT:
      return "a scalar";
    case YAML_SEQUENCE_START_EVENT:
      return "a sequence";
    case YAML_MAPPING_START_EVENT:
      return "a mapping";
    default:
      return "nothing";
  }
}

std::optional<bool> YamlBool(std::string_view text) {
  if (text == "true" || text == "True" || text == "TRUE") return true;
  if (text == "false" || text == "False" || text == "FALSE") return false;
  return std::nullopt;
}

absl::StatusOr<Measurements> ParseYamlEvents(YamlParser& parser, Builder& builder) {
  RETURN_IF_ERROR(parser.Next(builder));  // STREAM-START
  RETURN_IF_ERROR(parser.Next(builder));
  if (parser.event().type() == YAML_STREAM_END_EVENT) return builder.Finish();  // empty
  // DOCUMENT-START
  RETURN_IF_ERROR(parser.Next(builder));
  if (parser.event().type() != YAML_MAPPING_START_EVENT) {
    if (parser.event().type() == YAML_SCALAR_EVENT && parser.event().scalar().empty() &&
        parser.event().plain()) {
      return builder.Finish();  // a document of only comments
    }
    return builder.Error("the document must be a mapping, not {}", YamlKind(parser.event().type()));
  }
  for (;;) {
    RETURN_IF_ERROR(parser.Next(builder));
    if (parser.event().type() == YAML_MAPPING_END_EVENT) break;
    if (parser.event().type() != YAML_SCALAR_EVENT) {
      return builder.Error("keys must be PCR indices, not {}", YamlKind(parser.event().type()));
    }
    RETURN_IF_ERROR(builder.StartEntry(parser.event().scalar()));
    RETURN_IF_ERROR(parser.Next(builder));
    if (parser.event().type() != YAML_MAPPING_START_EVENT) {
      return builder.Error(
          "PCR {}: value must be a mapping with \"expected\" and \"warnOnly\", not {} "
          "(Constellation's legacy string form is not accepted)",
          builder.index(), YamlKind(parser.event().type()));
    }
    for (;;) {
      RETURN_IF_ERROR(parser.Next(builder));
      if (parser.event().type() == YAML_MAPPING_END_EVENT) break;
      if (parser.event().type() != YAML_SCALAR_EVENT) {
        return builder.Error("PCR {}: field names must be scalars", builder.index());
      }
      ASSIGN_OR_RETURN(std::string_view field, builder.Field(parser.event().scalar()));
      RETURN_IF_ERROR(parser.Next(builder));
      if (parser.event().type() != YAML_SCALAR_EVENT) {
        return builder.Error("PCR {}: \"{}\" must be a scalar, not {}", builder.index(), field,
                             YamlKind(parser.event().type()));
      }
      if (field == kExpected) {
        RETURN_IF_ERROR(builder.SetExpected(parser.event().scalar()));
      } else {
        const std::optional<bool> value =
            parser.event().plain() ? YamlBool(parser.event().scalar()) : std::nullopt;
        if (!value) {
          return builder.Error("PCR {}: \"warnOnly\" must be true or false", builder.index());
        }
        builder.SetWarnOnly(*value);
      }
    }
    RETURN_IF_ERROR(builder.EndEntry());
  }
  RETURN_IF_ERROR(parser.Next(builder));  // DOCUMENT-END
  RETURN_IF_ERROR(parser.Next(builder));
  if (parser.event().type() != YAML_STREAM_END_EVENT) {
    return builder.Error("only one YAML document is accepted");
  }
  return builder.Finish();
}

absl::Status CheckSize(std::string_view text, std::string_view format) {
  if (text.size() > kMaxMeasurementsFileSize) {
    return InvalidArgumentError("measurements ({}): {} bytes is more than the {} accepted", format,
                                text.size(), kMaxMeasurementsFileSize);
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<Measurements> ParseMeasurementsJson(std::string_view text) {
  RETURN_IF_ERROR(CheckSize(text, "JSON"));
  Builder builder("JSON");
  JsonHandler handler(builder);
  const bool parsed =
      nlohmann::json::sax_parse(text, &handler, nlohmann::json::input_format_t::json,
                                /*strict=*/true);
  if (!handler.status().ok()) return handler.status();
  if (!parsed) return builder.Error("not valid JSON");
  return builder.Finish();
}

absl::StatusOr<Measurements> ParseMeasurementsYaml(std::string_view text) {
  RETURN_IF_ERROR(CheckSize(text, "YAML"));
  Builder builder("YAML");
  YamlParser parser(text);
  return ParseYamlEvents(parser, builder);
}

absl::StatusOr<Measurements> ParseMeasurements(std::string_view text) {
  const size_t first = text.find_first_not_of(" \t\r\n");
  if (first != std::string_view::npos && text[first] == '{') return ParseMeasurementsJson(text);
  return ParseMeasurementsYaml(text);
}

std::string MeasurementsToJson(const Measurements& measurements) {
  std::string out = "{\n";
  size_t n = 0;
  for (const auto& [index, m] : measurements) {
    out += fmt::format("  \"{}\": {{\n    \"expected\": \"{}\",\n    \"warnOnly\": {}\n  }}{}\n",
                       index, crypto::HexEncode(m.expected), m.warn_only ? "true" : "false",
                       ++n < measurements.size() ? "," : "");
  }
  out += "}\n";
  return out;
}

std::string MeasurementsToYaml(const Measurements& measurements) {
  std::string out;
  for (const auto& [index, m] : measurements) {
    out += fmt::format("{}:\n  expected: \"{}\"\n  warnOnly: {}\n", index,
                       crypto::HexEncode(m.expected), m.warn_only ? "true" : "false");
  }
  return out;
}

Measurements MeasurementsFromPcrs(std::span<const PcrValue> pcrs) {
  Measurements out;
  for (size_t i = 0; i < pcrs.size() && i <= kMaxMeasurementIndex; ++i) {
    out.emplace(static_cast<uint32_t>(i), Measurement{pcrs[i], false});
  }
  return out;
}

std::string ToJson(std::span<const PcrValue> pcrs) {
  return MeasurementsToJson(MeasurementsFromPcrs(pcrs));
}

Comparison Compare(const Measurements& measurements, std::span<const PcrValue> pcr_values) {
  Comparison out;
  for (const auto& [index, m] : measurements) {
    PcrMismatch mismatch{index, m.expected, std::nullopt, m.warn_only};
    if (index < pcr_values.size()) {
      if (pcr_values[index] == m.expected) continue;
      mismatch.actual = pcr_values[index];
    }
    (m.warn_only ? out.warnings : out.failures).push_back(mismatch);
  }
  return out;
}

}  // namespace keywarden::attest
