// Integration tests of `keywarden volume` against real parts: a running key service, real
// libcryptsetup headers checked by the cryptsetup CLI, FUSE, loop devices, ext4 (mkfs, mount,
// e2fsck), qemu-img and nbdkit's luks filter (LUKS1 peers), and Nettle as an independent
// AES-XTS. Needs root (mount, losetup) and /dev/fuse; skips otherwise.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <thread>

#include "keywarden/crypto/encoding.h"
#include "keywarden/crypto/sha256.h"
#include "keywarden/status.h"
#include "keywarden/volume/volume.h"
#include "tests/file_io.h"
#include "tests/luks_tools.h"
#include "tests/service_process.h"
#include "tests/subprocess.h"

namespace keywarden::testing {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;
using ::testing::HasSubstr;
using ::testing::Not;

// Exec runs a program (keywarden::testing::Run; inside TEST bodies `Run` is GoogleTest's).
RunResult Exec(std::vector<std::string> argv) { return keywarden::testing::Run(std::move(argv)); }

std::string Sha256Hex(const std::string& bytes) {
  return crypto::HexEncode(
      crypto::Sha256({std::span(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size())}));
}

std::string FileHash(const fs::path& path) {
  auto text = ReadFile(path);
  EXPECT_TRUE(text.has_value()) << path;
  return text ? Sha256Hex(*text) : "";
}

// VolumeEnv is one test's world: a cluster, its key service, a run directory, and every mount,
// loop device and open volume the test makes, all undone at the end even if the test fails.
class VolumeEnv {
 public:
  VolumeEnv() {
    const RunResult r = Exec({KEYWARDEN_BINARY, "init", "--dir", state().string()});
    EXPECT_TRUE(r.ok()) << r;
    server_ = std::make_unique<ServiceProcess>(std::vector<std::string>{"--dir", state().string()},
                                               temp_ / "serve.log");
    EXPECT_TRUE(server_->Start()) << server_->stderr_text();
  }

  ~VolumeEnv() {
    for (auto it = mounts_.rbegin(); it != mounts_.rend(); ++it) {
      if (Exec({"umount", it->string()}).exit_code != 0) Exec({"umount", "-l", it->string()});
    }
    for (const auto& loop : loops_) Exec({"losetup", "-d", loop});
    for (const auto& name : opened_) {
      const RunResult r = Kw({"volume", "close", name});
      if (r.exit_code != 0) ADD_FAILURE() << "cleanup: " << r;
    }
  }

  static bool Supported() { return geteuid() == 0 && access("/dev/fuse", R_OK | W_OK) == 0; }

  fs::path state() const { return temp_ / "state"; }
  fs::path secret() const { return state() / "mastersecret.json"; }
  fs::path run_dir() const { return temp_ / "run"; }
  const TempDir& temp() const { return temp_; }
  ServiceProcess& server() { return *server_; }
  std::string endpoint() const { return server_->endpoint(); }

  RunResult Kw(std::vector<std::string> args) {
    args.insert(args.begin(), KEYWARDEN_BINARY);
    const bool needs_run_dir = args.size() > 2 && args[1] == "volume" &&
                               (args[2] == "open" || args[2] == "close" || args[2] == "status");
    if (needs_run_dir) {
      args.push_back("--run-dir");
      args.push_back(run_dir().string());
    }
    return Exec(args);
  }

  fs::path Image(const std::string& name, uint64_t mib, const std::string& fill = "") {
    const fs::path path = temp_ / name;
    const std::string contents = fill.empty() ? std::string() : fill;
    temp_.WriteFile(name, contents);
    fs::resize_file(path, mib * 1024 * 1024);
    return path;
  }

  // Format formats with the key service and a cheap KDF (the DEK is a random 256-bit key).
  RunResult Format(const fs::path& image, std::vector<std::string> extra = {}) {
    std::vector<std::string> args = {"volume",   "format",  image.string(), "--endpoint",
                                     endpoint(), "--pbkdf", "pbkdf2",       "--pbkdf-iterations",
                                     "1000"};
    args.insert(args.end(), extra.begin(), extra.end());
    return Kw(args);
  }

  std::string Field(const fs::path& image, const std::string& key) {
    const RunResult r = Kw({"volume", "status", image.string()});
    const std::string prefix = "\n" + key + " ";
    const std::string text = "\n" + r.stdout_text;
    const size_t at = text.find(prefix);
    if (at == std::string::npos) return "";
    const size_t begin = at + prefix.size();
    return text.substr(begin, text.find('\n', begin) - begin);
  }

  // Open opens through FUSE into a fresh directory and returns the plaintext file's path.
  fs::path Open(const fs::path& image, const std::string& name,
                std::vector<std::string> key_args = {}) {
    const fs::path dir = temp_ / ("mnt-" + name);
    fs::create_directories(dir);
    if (key_args.empty()) key_args = {"--endpoint", endpoint()};
    std::vector<std::string> args = {"volume", "open",       image.string(), "--name",
                                     name,     "--fuse-dir", dir.string()};
    args.insert(args.end(), key_args.begin(), key_args.end());
    const RunResult r = Kw(args);
    EXPECT_TRUE(r.ok()) << r;
    if (!r.ok()) return {};
    if (std::find(opened_.begin(), opened_.end(), name) == opened_.end()) opened_.push_back(name);
    EXPECT_EQ(r.stdout_text, (dir / name).string() + "\n");
    return dir / name;
  }

  RunResult Close(const std::string& name) {
    const RunResult r = Kw({"volume", "close", name});
    if (r.ok()) opened_.erase(std::remove(opened_.begin(), opened_.end(), name), opened_.end());
    return r;
  }

  std::string Losetup(const fs::path& file) {
    const RunResult r = Exec({"losetup", "--find", "--show", file.string()});
    EXPECT_TRUE(r.ok()) << r;
    std::string loop = r.stdout_text.substr(0, r.stdout_text.find('\n'));
    loops_.push_back(loop);
    return loop;
  }
  void Detach(const std::string& loop) {
    const RunResult r = Exec({"losetup", "-d", loop});
    EXPECT_TRUE(r.ok()) << r;
    loops_.erase(std::remove(loops_.begin(), loops_.end(), loop), loops_.end());
  }
  fs::path Mount(const std::string& device, const std::string& name) {
    const fs::path dir = temp_ / ("fs-" + name);
    fs::create_directories(dir);
    const RunResult r = Exec({"mount", device, dir.string()});
    EXPECT_TRUE(r.ok()) << r;
    mounts_.push_back(dir);
    return dir;
  }
  void Umount(const fs::path& dir) {
    const RunResult r = Exec({"umount", dir.string()});
    EXPECT_TRUE(r.ok()) << r;
    mounts_.erase(std::remove(mounts_.begin(), mounts_.end(), dir), mounts_.end());
  }

  // Dek returns DEK(id) from the key service (raw bytes).
  std::string Dek(const std::string& id) {
    const RunResult r = Kw({"dek", "get", "--endpoint", endpoint(), "--id", id});
    EXPECT_TRUE(r.ok()) << r;
    auto bytes = crypto::HexDecode(r.stdout_text.substr(0, r.stdout_text.find('\n')));
    return bytes.ok() ? std::string(bytes->begin(), bytes->end()) : "";
  }

 private:
  TempDir temp_{"kw-volume"};
  std::unique_ptr<ServiceProcess> server_;
  std::vector<std::string> opened_;
  std::vector<std::string> loops_;
  std::vector<fs::path> mounts_;
};

#define REQUIRE_ROOT_AND_FUSE()                                              \
  do {                                                                       \
    if (!VolumeEnv::Supported()) GTEST_SKIP() << "needs root and /dev/fuse"; \
  } while (0)

TEST(VolumeTest, FormatWritesTheProfileAndCryptsetupAcceptsTheDek) {
  REQUIRE_ROOT_AND_FUSE();
  VolumeEnv env;
  const fs::path image = env.Image("v.img", 40);
  const RunResult format = env.Format(image);
  ASSERT_TRUE(format.ok()) << format;
  const std::string uuid = env.Field(image, "uuid");
  ASSERT_EQ(uuid.size(), 36u);
  EXPECT_THAT(format.stdout_text, HasSubstr("key-id " + uuid));

  const RunResult dump = Exec({"cryptsetup", "luksDump", image.string()});
  ASSERT_TRUE(dump.ok()) << dump;
  EXPECT_THAT(dump.stdout_text, HasSubstr("Version:       \t2"));
  EXPECT_THAT(dump.stdout_text, HasSubstr("UUID:          \t" + uuid));
  EXPECT_THAT(dump.stdout_text, HasSubstr("cipher: aes-xts-plain64"));
  EXPECT_THAT(dump.stdout_text, HasSubstr("sector: 4096 [bytes]"));
  EXPECT_THAT(dump.stdout_text, HasSubstr("offset: 16777216 [bytes]"));
  EXPECT_THAT(dump.stdout_text, HasSubstr("Key:        512 bits"));
  EXPECT_THAT(dump.stdout_text, HasSubstr("0: keywarden"));
  EXPECT_THAT(dump.stdout_text, Not(HasSubstr("  1: luks2")));

  // The DEK of the volume's UUID, fetched like any other key, opens keyslot 0.
  const fs::path key = env.temp().WriteFile("dek.bin", env.Dek(uuid));
  const RunResult test_pass =
      Exec({"cryptsetup", "open", "--test-passphrase", "--key-file", key.string(), image.string()});
  EXPECT_TRUE(test_pass.ok()) << test_pass;
  const fs::path other = env.temp().WriteFile("other.bin", env.Dek(uuid + "x"));
  const RunResult wrong = Exec(
      {"cryptsetup", "open", "--test-passphrase", "--key-file", other.string(), image.string()});
  EXPECT_NE(wrong.exit_code, 0) << wrong;
}

TEST(VolumeTest, DefaultKeyslotKdfIsArgon2id) {
  REQUIRE_ROOT_AND_FUSE();
  VolumeEnv env;
  const fs::path image = env.Image("v.img", 20);
  const RunResult format =
      env.Kw({"volume", "format", image.string(), "--endpoint", env.endpoint()});
  ASSERT_TRUE(format.ok()) << format;
  EXPECT_THAT(format.stdout_text, HasSubstr("pbkdf argon2id"));
  const RunResult dump = Exec({"cryptsetup", "luksDump", image.string()});
  EXPECT_THAT(dump.stdout_text, HasSubstr("PBKDF:      argon2id"));
}

TEST(VolumeTest, UserspaceWritesDecryptWithTheDumpedVolumeKeyUnderNettle) {
  REQUIRE_ROOT_AND_FUSE();
  VolumeEnv env;
  const fs::path image = env.Image("v.img", 24);
  ASSERT_TRUE(env.Format(image).ok());
  const std::string uuid = env.Field(image, "uuid");
  const fs::path plain = env.Open(image, "vol");
  ASSERT_FALSE(plain.empty());
  EXPECT_EQ(fs::file_size(plain), 8u * 1024 * 1024);

  // Unaligned writes that straddle sectors, then a whole region.
  const std::string a = RandomText(10000, 1), b = RandomText(3 * 4096, 2);
  WriteAt(plain, 4096 - 17, a);
  WriteAt(plain, 64 * 4096, b);
  EXPECT_EQ(ReadAt(plain, 4096 - 17, a.size()), a);
  ASSERT_TRUE(env.Close("vol").ok());

  const fs::path key_file = env.temp().WriteFile("dek.bin", env.Dek(uuid));
  const fs::path vk = env.temp() / "volume-key.bin";
  const RunResult dump =
      Exec({"cryptsetup", "luksDump", "-q", "--dump-volume-key", "--volume-key-file", vk.string(),
            "--key-file", key_file.string(), image.string()});
  ASSERT_TRUE(dump.ok()) << dump;
  const std::string volume_key = *ReadFile(vk);
  ASSERT_EQ(volume_key.size(), 64u);

  const std::string disk = *ReadFile(image);
  constexpr size_t kData = 16 * 1024 * 1024;
  auto sector = [&](uint64_t n) {
    // dm-crypt's plain64 IV counts 512-byte units: 4096-byte sector n has IV 8n.
    return NettleXtsDecryptSector(volume_key, 8 * n, disk.substr(kData + n * 4096, 4096));
  };
  const std::string first_two = sector(0) + sector(1) + sector(2) + sector(3);
  EXPECT_EQ(first_two.substr(4096 - 17, a.size()), a);
  EXPECT_EQ(sector(64) + sector(65) + sector(66), b);
  EXPECT_EQ(disk.find(a.substr(0, 64)), std::string::npos) << "plaintext on disk";
}

TEST(VolumeTest, Ext4OnALoopDeviceSurvivesCloseAndReopen) {
  REQUIRE_ROOT_AND_FUSE();
  VolumeEnv env;
  const fs::path image = env.Image("v.img", 64);
  ASSERT_TRUE(env.Format(image).ok());
  fs::path plain = env.Open(image, "data");
  ASSERT_FALSE(plain.empty());
  std::string loop = env.Losetup(plain);
  ASSERT_TRUE(Exec({"mkfs.ext4", "-q", loop}).ok());
  fs::path mounted = env.Mount(loop, "data");
  std::map<std::string, std::string> files;
  for (int i = 0; i < 20; ++i) {
    const std::string name = "file" + std::to_string(i);
    files[name] = RandomText(1000 + i * 7919, 100 + i);
    env.temp().WriteFile(fs::relative(mounted / name, env.temp().path()), files[name]);
  }
  ASSERT_TRUE(Exec({"sync"}).ok());

  // Busy: the loop device still holds the file.
  const RunResult busy = env.Close("data");
  EXPECT_EQ(busy.exit_code, 1) << busy;
  EXPECT_THAT(busy.stderr_text, HasSubstr("busy"));

  env.Umount(mounted);
  env.Detach(loop);
  ASSERT_TRUE(env.Close("data").ok());
  EXPECT_FALSE(fs::exists(plain));

  plain = env.Open(image, "data");
  ASSERT_FALSE(plain.empty());
  loop = env.Losetup(plain);
  const RunResult fsck = Exec({"e2fsck", "-fn", loop});
  EXPECT_TRUE(fsck.ok()) << fsck;
  mounted = env.Mount(loop, "data2");
  for (const auto& [name, contents] : files) {
    EXPECT_EQ(ReadFile(mounted / name), contents) << name;
  }
}

TEST(VolumeTest, StatusShowsTheMappingAndJson) {
  REQUIRE_ROOT_AND_FUSE();
  VolumeEnv env;
  const fs::path image = env.Image("v.img", 20);
  ASSERT_TRUE(env.Format(image).ok());
  const fs::path plain = env.Open(image, "st");
  const RunResult by_name = env.Kw({"volume", "status", "st"});
  ASSERT_TRUE(by_name.ok()) << by_name;
  EXPECT_THAT(by_name.stdout_text, HasSubstr("profile ok"));
  EXPECT_THAT(by_name.stdout_text, HasSubstr("mapped st fuse " + plain.string()));
  EXPECT_THAT(by_name.stdout_text, HasSubstr("sector-size 4096"));
  EXPECT_THAT(by_name.stdout_text, HasSubstr("integrity none"));
  const RunResult json = env.Kw({"volume", "status", image.string(), "--json"});
  ASSERT_TRUE(json.ok()) << json;
  const auto parsed = nlohmann::json::parse(json.stdout_text, nullptr, false);
  ASSERT_FALSE(parsed.is_discarded()) << json.stdout_text;
  EXPECT_EQ(parsed["header"]["sector_size"], 4096);
  EXPECT_EQ(parsed["header"]["key_id"], env.Field(image, "uuid"));
  EXPECT_EQ(parsed["mappings"][0]["path"], plain.string());
  // A second open under the same name, or of the same target, is refused.
  const fs::path dir2 = env.temp() / "mnt2";
  fs::create_directories(dir2);
  const RunResult same_name = env.Kw({"volume", "open", image.string(), "--name", "st",
                                      "--fuse-dir", dir2.string(), "--endpoint", env.endpoint()});
  EXPECT_EQ(same_name.exit_code, 1);
  EXPECT_THAT(same_name.stderr_text, HasSubstr("is open"));
  const RunResult same_target = env.Kw({"volume", "open", image.string(), "--name", "st2",
                                        "--fuse-dir", dir2.string(), "--endpoint", env.endpoint()});
  EXPECT_EQ(same_target.exit_code, 1);
  EXPECT_THAT(same_target.stderr_text, HasSubstr("already open"));
  const RunResult none = env.Kw({"volume", "close", "nothing-here"});
  EXPECT_EQ(none.exit_code, 1);
  EXPECT_THAT(none.stderr_text, HasSubstr("no open volume named nothing-here"));
}

TEST(VolumeTest, SigtermStopsTheServerAndUnmounts) {
  REQUIRE_ROOT_AND_FUSE();
  VolumeEnv env;
  const fs::path image = env.Image("v.img", 20);
  ASSERT_TRUE(env.Format(image).ok());
  const fs::path plain = env.Open(image, "term");
  const std::string data = RandomText(50000, 6);
  WriteAt(plain, 12345, data);
  const auto parsed =
      nlohmann::json::parse(env.Kw({"volume", "status", "term", "--json"}).stdout_text);
  const pid_t server = parsed["mappings"][0]["pid"].get<pid_t>();
  ASSERT_EQ(kill(server, SIGTERM), 0);
  for (int i = 0; i < 500 && kill(server, 0) == 0; ++i) std::this_thread::sleep_for(10ms);
  EXPECT_NE(kill(server, 0), 0) << "the server did not exit on SIGTERM";
  EXPECT_FALSE(fs::exists(plain));
  EXPECT_FALSE(fs::exists(env.run_dir() / "volumes" / "term.json"));
  EXPECT_THAT(env.Kw({"volume", "status", image.string()}).stdout_text, HasSubstr("mapped no"));
  // Everything written before the signal is there.
  const fs::path again = env.Open(image, "term");
  EXPECT_EQ(ReadAt(again, 12345, data.size()), data);
}

TEST(VolumeTest, WrongKeyIsRefusedAndTheHeaderIsUnchanged) {
  REQUIRE_ROOT_AND_FUSE();
  VolumeEnv env;
  const fs::path image = env.Image("v.img", 20);
  ASSERT_TRUE(env.Format(image).ok());
  const std::string before = FileHash(image);
  // Another cluster's master secret derives another DEK for this UUID.
  const fs::path other = env.temp() / "other";
  ASSERT_TRUE(Exec({KEYWARDEN_BINARY, "init", "--dir", other.string()}).ok());
  const fs::path dir = env.temp() / "mnt-wrong";
  fs::create_directories(dir);
  const RunResult r =
      env.Kw({"volume", "open", image.string(), "--name", "wrong", "--fuse-dir", dir.string(),
              "--master-secret", (other / "mastersecret.json").string()});
  EXPECT_EQ(r.exit_code, 1) << r;
  EXPECT_THAT(r.stderr_text, HasSubstr("does not open keyslot 0"));
  EXPECT_FALSE(fs::exists(dir / "wrong"));
  EXPECT_EQ(FileHash(image), before);
  // The right master secret opens it without the key service (recovery).
  env.server().Stop();
  const fs::path plain = env.Open(image, "right", {"--master-secret", env.secret().string()});
  EXPECT_TRUE(fs::exists(plain));
}

TEST(VolumeTest, KeyServiceDownMeansAClearErrorAndNothingWritten) {
  REQUIRE_ROOT_AND_FUSE();
  VolumeEnv env;
  const fs::path formatted = env.Image("f.img", 20);
  ASSERT_TRUE(env.Format(formatted).ok());
  const fs::path blank = env.Image("b.img", 20, RandomText(4096, 9));
  const std::string blank_hash = FileHash(blank), formatted_hash = FileHash(formatted);
  const std::string endpoint = env.endpoint();
  env.server().Stop();

  const RunResult format =
      env.Kw({"volume", "format", blank.string(), "--endpoint", endpoint, "--timeout", "2"});
  EXPECT_EQ(format.exit_code, 1) << format;
  EXPECT_THAT(format.stderr_text, HasSubstr("cannot get the volume's key"));
  EXPECT_EQ(FileHash(blank), blank_hash);

  const fs::path dir = env.temp() / "mnt-down";
  fs::create_directories(dir);
  const RunResult open =
      env.Kw({"volume", "open", formatted.string(), "--name", "down", "--fuse-dir", dir.string(),
              "--endpoint", endpoint, "--timeout", "2"});
  EXPECT_EQ(open.exit_code, 1) << open;
  EXPECT_THAT(open.stderr_text, HasSubstr("cannot get the volume's key"));
  EXPECT_FALSE(fs::exists(dir / "down"));
  EXPECT_EQ(FileHash(formatted), formatted_hash);
}

TEST(VolumeTest, FormatRefusalsWriteNothing) {
  REQUIRE_ROOT_AND_FUSE();
  VolumeEnv env;
  const fs::path image = env.Image("v.img", 20);
  ASSERT_TRUE(env.Format(image).ok());
  const std::string hash = FileHash(image);
  const RunResult again = env.Format(image);
  EXPECT_EQ(again.exit_code, 1);
  EXPECT_THAT(again.stderr_text, HasSubstr("already holds a LUKS volume"));
  EXPECT_EQ(FileHash(image), hash);
  const RunResult forced = env.Format(image, {"--force"});
  EXPECT_TRUE(forced.ok()) << forced;
  EXPECT_NE(env.Field(image, "uuid"), "");

  if (access("/dev/mapper/control", F_OK) != 0) {
    const fs::path blank = env.Image("i.img", 40);
    const std::string blank_hash = FileHash(blank);
    const RunResult integrity = env.Format(blank, {"--integrity"});
    EXPECT_EQ(integrity.exit_code, 1);
    EXPECT_THAT(integrity.stderr_text, HasSubstr("device-mapper"));
    EXPECT_THAT(integrity.stderr_text, HasSubstr("nothing was written"));
    EXPECT_EQ(FileHash(blank), blank_hash);
  }
  const fs::path tiny = env.Image("tiny.img", 8);
  const RunResult small = env.Format(tiny);
  EXPECT_EQ(small.exit_code, 1);
  EXPECT_THAT(small.stderr_text, HasSubstr("needs at least"));
  const RunResult missing = env.Format(env.temp() / "missing.img");
  EXPECT_EQ(missing.exit_code, 1);
}

TEST(VolumeTest, WipeInitializesAndAnInterruptedFormatIsNotOpened) {
  REQUIRE_ROOT_AND_FUSE();
  VolumeEnv env;
  const fs::path image = env.Image("v.img", 20, RandomText(64 * 1024, 4));
  ASSERT_TRUE(env.Format(image, {"--wipe"}).ok());
  const fs::path plain = env.Open(image, "w");
  EXPECT_EQ(*ReadFile(plain), std::string(4 * 1024 * 1024, '\0'));
  ASSERT_TRUE(env.Close("w").ok());

  // A token that says "initialized": false is what a format killed during its wipe leaves.
  const RunResult remove =
      Exec({"cryptsetup", "token", "remove", "--token-id", "0", image.string()});
  ASSERT_TRUE(remove.ok()) << remove;
  const std::string uuid = env.Field(image, "uuid");
  const fs::path token =
      env.temp().WriteFile("token.json", R"({"type":"keywarden","keyslots":["0"],"key_id":")" +
                                             uuid + R"(","initialized":false})");
  ASSERT_TRUE(Exec({"cryptsetup", "token", "import", "--token-id", "0", "--json-file",
                    token.string(), image.string()})
                  .ok());
  const fs::path dir = env.temp() / "mnt-u";
  fs::create_directories(dir);
  const RunResult r = env.Kw({"volume", "open", image.string(), "--name", "u", "--fuse-dir",
                              dir.string(), "--endpoint", env.endpoint()});
  EXPECT_EQ(r.exit_code, 1) << r;
  EXPECT_THAT(r.stderr_text, HasSubstr("never fully initialized"));
}

TEST(VolumeTest, WipeProgressGoesToATerminalOnly) {
  REQUIRE_ROOT_AND_FUSE();
  VolumeEnv env;
  const fs::path piped = env.Image("piped.img", 24);
  const RunResult quiet = env.Format(piped, {"--wipe"});
  ASSERT_TRUE(quiet.ok()) << quiet;
  EXPECT_THAT(quiet.stderr_text, Not(HasSubstr("initializing")));
  EXPECT_EQ(quiet.stderr_text.find('\r'), std::string::npos);
  // script(1) gives the command a pseudo-terminal.
  const fs::path tty = env.Image("tty.img", 24);
  const std::string command = std::string(KEYWARDEN_BINARY) + " volume format " + tty.string() +
                              " --endpoint " + env.endpoint() +
                              " --pbkdf pbkdf2 --pbkdf-iterations 1000 --wipe";
  const RunResult shown = Exec({"script", "-qec", command, "/dev/null"});
  ASSERT_TRUE(shown.ok()) << shown;
  EXPECT_THAT(shown.stdout_text, HasSubstr("initializing ["));
  EXPECT_THAT(shown.stdout_text, HasSubstr("100%"));
}

// ExpectRefused checks that open and status refuse `image` with `reason` and change nothing.
void ExpectRefused(VolumeEnv& env, const fs::path& image, const std::string& reason,
                   std::vector<std::string> key_args) {
  const std::string before = FileHash(image);
  const fs::path dir = env.temp() / "mnt-bad";
  fs::create_directories(dir);
  std::vector<std::string> args = {"volume", "open",       image.string(), "--name",
                                   "bad",    "--fuse-dir", dir.string()};
  args.insert(args.end(), key_args.begin(), key_args.end());
  const RunResult open = env.Kw(args);
  EXPECT_EQ(open.exit_code, 1) << open;
  EXPECT_THAT(open.stderr_text, HasSubstr("LUKS header refused"));
  EXPECT_THAT(open.stderr_text, HasSubstr(reason));
  EXPECT_FALSE(fs::exists(dir / "bad"));
  const RunResult status = env.Kw({"volume", "status", image.string()});
  EXPECT_EQ(status.exit_code, 1) << status;
  EXPECT_THAT(status.stdout_text, HasSubstr("profile refused"));
  EXPECT_EQ(FileHash(image), before) << "a refused header was written to";
}

TEST(VolumeTest, MaliciousHeadersAreRefused) {
  REQUIRE_ROOT_AND_FUSE();
  VolumeEnv env;
  const std::vector<std::string> key = {"--endpoint", env.endpoint()};

  // A null cipher for the data (a host that wants to read the data), and for the keyslot area.
  // (cryptsetup cannot format cipher_null without device-mapper, so the JSON is edited.)
  const fs::path null_cipher = env.Image("null.img", 20);
  ASSERT_TRUE(env.Format(null_cipher).ok());
  ASSERT_EQ(RewriteLuks2Metadata(
                null_cipher,
                [](nlohmann::json& j) { j["segments"]["0"]["encryption"] = "cipher_null-ecb"; }),
            "");
  ExpectRefused(env, null_cipher, "cipher_null", key);
  const fs::path null_slot = env.Image("nullslot.img", 20);
  ASSERT_TRUE(env.Format(null_slot).ok());
  ASSERT_EQ(RewriteLuks2Metadata(null_slot,
                                 [](nlohmann::json& j) {
                                   j["keyslots"]["0"]["area"]["encryption"] = "cipher_null-ecb";
                                 }),
            "");
  ExpectRefused(env, null_slot, "keyslot 0 is encrypted with \"cipher_null-ecb\"", key);
  const fs::path pass = env.temp().WriteFile("pass", "host-knows-this");

  // An extra keyslot whose passphrase the host knows.
  const fs::path extra = env.Image("extra.img", 20);
  ASSERT_TRUE(env.Format(extra).ok());
  const std::string uuid = env.Field(extra, "uuid");
  const fs::path dek = env.temp().WriteFile("dek.bin", env.Dek(uuid));
  const RunResult add =
      Exec({"cryptsetup", "luksAddKey", "-q", "--pbkdf", "pbkdf2", "--pbkdf-force-iterations",
            "1000", "--key-file", dek.string(), extra.string(), pass.string()});
  ASSERT_TRUE(add.ok()) << add;
  ExpectRefused(env, extra, "2 keyslots", key);

  // A data segment moved into the header, with valid checksums.
  const fs::path overlap = env.Image("overlap.img", 20);
  ASSERT_TRUE(env.Format(overlap).ok());
  ASSERT_EQ(RewriteLuks2Metadata(overlap,
                                 [](nlohmann::json& j) { j["segments"]["0"]["offset"] = "32768"; }),
            "");
  // libcryptsetup's own validation already rejects this one; Keywarden says so.
  ExpectRefused(env, overlap, "Data offset: 32768", key);

  // A second data segment.
  const fs::path foreign = env.Image("foreign.img", 40);
  ASSERT_TRUE(env.Format(foreign).ok());
  ASSERT_EQ(RewriteLuks2Metadata(foreign,
                                 [](nlohmann::json& j) {
                                   j["segments"]["0"]["size"] = "4194304";
                                   j["segments"]["1"] = j["segments"]["0"];
                                   j["segments"]["1"]["offset"] = "20971520";
                                   j["segments"]["1"]["encryption"] = "cipher_null-ecb";
                                   j["segments"]["1"]["size"] = "dynamic";
                                   j["digests"]["0"]["segments"] = {"0", "1"};
                                 }),
            "");
  ExpectRefused(env, foreign, "2 data segments", key);
}

TEST(VolumeTest, ConcurrentVerifiedIoThroughFuse) {
  REQUIRE_ROOT_AND_FUSE();
  VolumeEnv env;
  const fs::path image = env.Image("v.img", 48);
  ASSERT_TRUE(env.Format(image).ok());
  const fs::path plain = env.Open(image, "fio");
  // Four jobs write verified random blocks of mixed sizes in their own 8 MiB regions at once,
  // then read them back; fio checks every block's crc32c and header.
  const RunResult fio =
      Exec({"fio", "--name=kw", "--filename=" + plain.string(), "--rw=randwrite",
            "--bsrange=512-64k", "--direct=1", "--ioengine=psync", "--numjobs=4", "--size=8m",
            "--offset_increment=8m", "--verify=crc32c", "--verify_fatal=1", "--do_verify=1",
            "--verify_state_save=0", "--group_reporting"});
  EXPECT_TRUE(fio.ok()) << fio;
  EXPECT_THAT(fio.stdout_text + fio.stderr_text, Not(HasSubstr("verify failed")));
  EXPECT_THAT(fio.stdout_text, HasSubstr("err= 0"));
}

TEST(VolumeTest, KilledServerDuringWritesLeavesACleanFilesystem) {
  REQUIRE_ROOT_AND_FUSE();
  VolumeEnv env;
  const fs::path image = env.Image("v.img", 80);
  ASSERT_TRUE(env.Format(image).ok());
  fs::path plain = env.Open(image, "crash");
  std::string loop = env.Losetup(plain);
  ASSERT_TRUE(Exec({"mkfs.ext4", "-q", loop}).ok());
  const fs::path mounted = env.Mount(loop, "crash");
  const RunResult status = env.Kw({"volume", "status", "crash", "--json"});
  const auto parsed = nlohmann::json::parse(status.stdout_text, nullptr, false);
  ASSERT_FALSE(parsed.is_discarded()) << status;
  const pid_t server = parsed["mappings"][0]["pid"].get<pid_t>();
  ASSERT_GT(server, 0);

  std::thread writer([&] {
    const std::string script =
        "i=0; while [ $i -lt 2000 ]; do dd if=/dev/urandom of=" + mounted.string() +
        "/f$i bs=64k count=4 conv=fsync status=none || exit 0; i=$((i+1)); done";
    Exec({"sh", "-c", script});
  });
  std::this_thread::sleep_for(1500ms);
  ASSERT_EQ(kill(server, SIGKILL), 0);
  writer.join();

  // What an operator does after a crash: tear down, close (cleans the dead server's mount),
  // open again, let ext4 replay its journal, then check.
  if (Exec({"umount", mounted.string()}).exit_code != 0) Exec({"umount", "-l", mounted.string()});
  env.Detach(loop);
  const RunResult closed = env.Close("crash");
  EXPECT_TRUE(closed.ok()) << closed;
  plain = env.Open(image, "crash");
  loop = env.Losetup(plain);
  const fs::path again = env.Mount(loop, "again");
  env.Umount(again);
  const RunResult fsck = Exec({"e2fsck", "-fn", loop});
  EXPECT_TRUE(fsck.ok()) << fsck;
}

// State disks (issue 5): the measurement salt kept in the Keywarden token under a MAC keyed
// from the disk's DEK, through the library API (a node calls it; there is no CLI for it).

SecretBytes SecretOf(const std::string& bytes) {
  return SecretBytes(std::span(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size()));
}

std::vector<uint8_t> TestSalt(uint8_t seed) {
  std::vector<uint8_t> salt(volume::kMeasurementSaltSize);
  for (size_t i = 0; i < salt.size(); ++i) salt[i] = static_cast<uint8_t>(seed + 7 * i);
  return salt;
}

// OpensslNodeStateMac computes the documented node_state MAC (docs/formats/volume.md) with the
// openssl CLI, independently of Keywarden's HKDF and HMAC code. Lower-case hex.
std::string OpensslNodeStateMac(const TempDir& temp, const std::string& dek,
                                const std::string& uuid, const std::vector<uint8_t>& salt) {
  const std::string label = "keywarden-node-state-v1";
  const RunResult kdf =
      Exec({"openssl", "kdf", "-keylen", "32", "-kdfopt", "digest:SHA256", "-kdfopt",
            "hexkey:" + HexOf(dek), "-kdfopt", "info:" + label, "HKDF"});
  EXPECT_TRUE(kdf.ok()) << kdf;
  std::string key;
  for (char c : kdf.stdout_text) {
    if (std::isxdigit(static_cast<unsigned char>(c))) key.push_back(c);
  }
  std::string message = label + '\0' + uuid + '\0';
  message.append(salt.begin(), salt.end());
  const fs::path in = temp.WriteFile("mac-input.bin", message);
  const RunResult mac = Exec({"openssl", "mac", "-digest", "SHA256", "-macopt", "hexkey:" + key,
                              "-in", in.string(), "HMAC"});
  EXPECT_TRUE(mac.ok()) << mac;
  std::string hex;
  for (char c : mac.stdout_text) {
    if (std::isxdigit(static_cast<unsigned char>(c))) {
      hex.push_back(static_cast<char>(std::tolower(static_cast<unsigned char>(c))));
    }
  }
  return hex;
}

// TokenZero returns the Keywarden token as cryptsetup (not Keywarden) reads it from the header.
nlohmann::json TokenZero(const fs::path& image) {
  const RunResult dump = Exec({"cryptsetup", "luksDump", "--dump-json-metadata", image.string()});
  EXPECT_TRUE(dump.ok()) << dump;
  const auto json = nlohmann::json::parse(dump.stdout_text, nullptr, false);
  if (json.is_discarded() || !json.contains("tokens") || !json["tokens"].contains("0")) {
    ADD_FAILURE() << "no token 0: " << dump.stdout_text;
    return nlohmann::json();
  }
  return json["tokens"]["0"];
}

// FormatStateDisk formats IMAGE through the library with a chosen UUID and a cheap KDF; the DEK
// comes from the key service. Returns the facts; `fetched` records the key ids asked for.
absl::StatusOr<volume::HeaderFacts> FormatStateDisk(VolumeEnv& env, const fs::path& image,
                                                    const std::string& uuid,
                                                    std::vector<std::string>* fetched = nullptr) {
  volume::FormatRequest request;
  request.target = image.string();
  request.uuid = uuid;
  request.options.pbkdf = "pbkdf2";
  request.options.pbkdf_iterations = 1000;
  return volume::FormatVolume(request, [&](const std::string& id) -> absl::StatusOr<SecretBytes> {
    if (fetched != nullptr) fetched->push_back(id);
    return SecretOf(env.Dek(id));
  });
}

TEST(VolumeTest, StateDiskFormatsWithAGivenUuid) {
  REQUIRE_ROOT_AND_FUSE();
  VolumeEnv env;
  const fs::path image = env.Image("state.img", 20);
  const std::string lower = "5d3f0b1a-9c2e-4b7d-8a61-0f2e3d4c5b6a";
  std::string upper = lower;
  for (char& c : upper) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  std::vector<std::string> fetched;
  auto facts = FormatStateDisk(env, image, upper, &fetched);
  ASSERT_TRUE(facts.ok()) << facts.status();
  EXPECT_EQ(facts->uuid, lower);
  EXPECT_EQ(facts->key_id, lower);
  EXPECT_EQ(fetched, std::vector<std::string>{lower});
  EXPECT_FALSE(facts->measurement_salt.has_value());
  const RunResult dump = Exec({"cryptsetup", "luksDump", image.string()});
  ASSERT_TRUE(dump.ok()) << dump;
  EXPECT_THAT(dump.stdout_text, HasSubstr("UUID:          \t" + lower));
  EXPECT_EQ(env.Field(image, "uuid"), lower);
  EXPECT_EQ(TokenZero(image)["key_id"], lower);
  // The DEK of that UUID opens keyslot 0 under cryptsetup.
  const fs::path key = env.temp().WriteFile("dek.bin", env.Dek(lower));
  const RunResult test_pass =
      Exec({"cryptsetup", "open", "--test-passphrase", "--key-file", key.string(), image.string()});
  EXPECT_TRUE(test_pass.ok()) << test_pass;

  // A malformed UUID is refused before the key is fetched or anything is written.
  const fs::path blank = env.Image("blank.img", 20, RandomText(4096, 3));
  const std::string blank_hash = FileHash(blank);
  for (const std::string& bad :
       std::vector<std::string>{"5d3f0b1a-9c2e-4b7d-8a61-0f2e3d4c5b6", "not-a-uuid",
                                "5d3f0b1a9c2e4b7d8a610f2e3d4c5b6a", lower + "0", "../" + lower}) {
    fetched.clear();
    auto refused = FormatStateDisk(env, blank, bad, &fetched);
    ASSERT_FALSE(refused.ok()) << bad;
    EXPECT_EQ(refused.status().code(), absl::StatusCode::kInvalidArgument) << refused.status();
    EXPECT_THAT(StatusMessage(refused.status()), HasSubstr("is not a UUID"));
    EXPECT_TRUE(fetched.empty()) << bad;
  }
  EXPECT_EQ(FileHash(blank), blank_hash);
}

TEST(VolumeTest, StateDiskSaltRoundTripsAndTheVolumeStillOpens) {
  REQUIRE_ROOT_AND_FUSE();
  VolumeEnv env;
  const fs::path image = env.Image("state.img", 20);
  const std::string uuid = "0b9e6c1d-2f3a-4e5b-9c7d-8e1f2a3b4c5d";
  ASSERT_TRUE(FormatStateDisk(env, image, uuid).ok());
  const std::string dek_bytes = env.Dek(uuid);
  const SecretBytes dek = SecretOf(dek_bytes);

  auto none = volume::ReadNodeState(image, dek);
  ASSERT_TRUE(none.ok()) << none.status();
  EXPECT_FALSE(none->has_value());
  auto checked = volume::CheckVolumeKey(image, dek);
  ASSERT_TRUE(checked.ok()) << checked.status();
  EXPECT_EQ(checked->uuid, uuid);

  const std::vector<uint8_t> salt = TestSalt(1);
  ASSERT_TRUE(volume::WriteNodeState(image, dek, salt).ok());
  auto read = volume::ReadNodeState(image, dek);
  ASSERT_TRUE(read.ok()) << read.status();
  ASSERT_TRUE(read->has_value());
  EXPECT_EQ(**read, salt);

  // The token as cryptsetup reads it: the documented members, and the documented MAC.
  const nlohmann::json token = TokenZero(image);
  EXPECT_EQ(token["type"], "keywarden");
  EXPECT_EQ(token["key_id"], uuid);
  EXPECT_EQ(token["initialized"], true);
  ASSERT_TRUE(token.contains("node_state")) << token.dump();
  EXPECT_EQ(token["node_state"].size(), 2u);
  EXPECT_EQ(token["node_state"]["measurement_salt"], crypto::HexEncode(salt));
  EXPECT_EQ(token["node_state"]["mac"], OpensslNodeStateMac(env.temp(), dek_bytes, uuid, salt));

  // status shows the salt (text and JSON).
  EXPECT_EQ(env.Field(image, "measurement-salt"), crypto::HexEncode(salt));
  const RunResult json = env.Kw({"volume", "status", image.string(), "--json"});
  const auto parsed = nlohmann::json::parse(json.stdout_text, nullptr, false);
  ASSERT_FALSE(parsed.is_discarded()) << json;
  EXPECT_EQ(parsed["header"]["measurement_salt"], crypto::HexEncode(salt));

  // Replacing the salt, and rewriting the initialized flag, keep one consistent token.
  const std::vector<uint8_t> salt2 = TestSalt(2);
  ASSERT_TRUE(volume::WriteNodeState(image, dek, salt2).ok());
  {
    auto device = volume::LuksDevice::Load(image);
    ASSERT_TRUE(device.ok()) << device.status();
    ASSERT_TRUE((*device)->SetInitialized(true).ok());
  }
  read = volume::ReadNodeState(image, dek);
  ASSERT_TRUE(read.ok()) << read.status();
  ASSERT_TRUE(read->has_value());
  EXPECT_EQ(**read, salt2);
  EXPECT_EQ(TokenZero(image)["node_state"]["measurement_salt"], crypto::HexEncode(salt2));

  // The keyslot is untouched: cryptsetup still accepts the DEK, and the volume opens through
  // the ordinary open path.
  const fs::path key = env.temp().WriteFile("dek.bin", dek_bytes);
  const RunResult test_pass =
      Exec({"cryptsetup", "open", "--test-passphrase", "--key-file", key.string(), image.string()});
  EXPECT_TRUE(test_pass.ok()) << test_pass;
  const fs::path plain = env.Open(image, "state");
  ASSERT_FALSE(plain.empty());
  const std::string data = RandomText(10000, 42);
  WriteAt(plain, 4096, data);
  ASSERT_TRUE(env.Close("state").ok());
  const fs::path again = env.Open(image, "state");
  EXPECT_EQ(ReadAt(again, 4096, data.size()), data);
  ASSERT_TRUE(env.Close("state").ok());
  read = volume::ReadNodeState(image, dek);
  ASSERT_TRUE(read.ok()) << read.status();
  EXPECT_EQ(read->value_or(std::vector<uint8_t>()), salt2);
}

TEST(VolumeTest, StateDiskWrongKeyIsRefusedAndNothingIsWritten) {
  REQUIRE_ROOT_AND_FUSE();
  VolumeEnv env;
  const fs::path image = env.Image("state.img", 20);
  const std::string uuid = "7a1b2c3d-4e5f-4061-8273-849506172839";
  ASSERT_TRUE(FormatStateDisk(env, image, uuid).ok());
  const SecretBytes dek = SecretOf(env.Dek(uuid));
  ASSERT_TRUE(volume::WriteNodeState(image, dek, TestSalt(1)).ok());
  const std::string before = FileHash(image);

  // Another volume's DEK from the same cluster, and a DEK of the wrong size.
  const SecretBytes other = SecretOf(env.Dek("8a1b2c3d-4e5f-4061-8273-849506172839"));
  absl::Status write = volume::WriteNodeState(image, other, TestSalt(9));
  EXPECT_EQ(write.code(), absl::StatusCode::kPermissionDenied) << write;
  EXPECT_THAT(StatusMessage(write), HasSubstr("wrong key"));
  auto read = volume::ReadNodeState(image, other);
  EXPECT_EQ(read.status().code(), absl::StatusCode::kPermissionDenied) << read.status();
  auto checked = volume::CheckVolumeKey(image, other);
  EXPECT_EQ(checked.status().code(), absl::StatusCode::kPermissionDenied) << checked.status();
  const SecretBytes short_key = SecretOf(env.Dek(uuid).substr(0, 31));
  write = volume::WriteNodeState(image, short_key, TestSalt(9));
  EXPECT_EQ(write.code(), absl::StatusCode::kInvalidArgument) << write;
  // A salt of the wrong size.
  write = volume::WriteNodeState(image, dek, std::vector<uint8_t>(31, 1));
  EXPECT_EQ(write.code(), absl::StatusCode::kInvalidArgument) << write;
  write = volume::WriteNodeState(image, dek, std::vector<uint8_t>(33, 1));
  EXPECT_EQ(write.code(), absl::StatusCode::kInvalidArgument) << write;
  EXPECT_EQ(FileHash(image), before) << "a refused call wrote to the header";

  // Not a volume at all, or no file.
  const fs::path blank = env.Image("blank.img", 20);
  EXPECT_EQ(volume::WriteNodeState(blank, dek, TestSalt(1)).code(), absl::StatusCode::kNotFound);
  EXPECT_FALSE(volume::ReadNodeState(env.temp() / "missing.img", dek).ok());
}

TEST(VolumeTest, StateDiskTamperedSaltIsDetected) {
  REQUIRE_ROOT_AND_FUSE();
  VolumeEnv env;
  const fs::path image = env.Image("state.img", 20);
  const std::string uuid = "1c2d3e4f-5a6b-4c7d-8e9f-a0b1c2d3e4f5";
  ASSERT_TRUE(FormatStateDisk(env, image, uuid).ok());
  const SecretBytes dek = SecretOf(env.Dek(uuid));
  const std::vector<uint8_t> salt = TestSalt(1);
  ASSERT_TRUE(volume::WriteNodeState(image, dek, salt).ok());
  const nlohmann::json good = TokenZero(image)["node_state"];

  auto expect_tampered = [&](const std::string& what) {
    auto read = volume::ReadNodeState(image, dek);
    ASSERT_FALSE(read.ok()) << what << " was accepted";
    EXPECT_EQ(read.status().code(), absl::StatusCode::kDataLoss) << what << ": " << read.status();
    EXPECT_THAT(StatusMessage(read.status()), HasSubstr("tampered with")) << what;
    // The wrong key is still reported as the wrong key, not as tampering.
    const SecretBytes other = SecretOf(env.Dek(uuid + "x"));
    EXPECT_EQ(volume::ReadNodeState(image, other).status().code(),
              absl::StatusCode::kPermissionDenied)
        << what;
  };
  auto rewrite = [&](const std::function<void(nlohmann::json&)>& edit) {
    ASSERT_EQ(RewriteLuks2Metadata(image,
                                   [&](nlohmann::json& j) {
                                     j["tokens"]["0"]["node_state"] = good;
                                     edit(j["tokens"]["0"]["node_state"]);
                                   }),
              "");
  };

  // One bit of the salt flipped (still well-formed lower-case hex), as a malicious host would.
  std::vector<uint8_t> flipped = salt;
  flipped[17] ^= 0x01;
  rewrite([&](nlohmann::json& n) { n["measurement_salt"] = crypto::HexEncode(flipped); });
  expect_tampered("a flipped salt bit");
  // The MAC flipped instead.
  std::string mac = good["mac"].get<std::string>();
  mac[0] = mac[0] == '0' ? '1' : '0';
  rewrite([&](nlohmann::json& n) { n["mac"] = mac; });
  expect_tampered("a flipped MAC");
  // A salt and MAC that verify on another disk (another UUID, another DEK) do not verify here.
  const fs::path other_image = env.Image("other.img", 20);
  const std::string other_uuid = "2c2d3e4f-5a6b-4c7d-8e9f-a0b1c2d3e4f5";
  ASSERT_TRUE(FormatStateDisk(env, other_image, other_uuid).ok());
  const std::vector<uint8_t> chosen = TestSalt(99);
  ASSERT_TRUE(volume::WriteNodeState(other_image, SecretOf(env.Dek(other_uuid)), chosen).ok());
  const nlohmann::json transplanted = TokenZero(other_image)["node_state"];
  rewrite([&](nlohmann::json& n) { n = transplanted; });
  expect_tampered("another disk's node_state");

  // A malformed node_state never reaches the MAC: the profile check refuses the header.
  rewrite([&](nlohmann::json& n) { n["extra"] = "1"; });
  auto refused = volume::ReadNodeState(image, dek);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kFailedPrecondition) << refused.status();
  EXPECT_THAT(StatusMessage(refused.status()), HasSubstr("node_state has an unexpected field"));

  // Writing the node state again repairs it (the key holder decides the salt).
  rewrite([](nlohmann::json&) {});
  auto read = volume::ReadNodeState(image, dek);
  ASSERT_TRUE(read.ok()) << read.status();
  EXPECT_EQ(read->value_or(std::vector<uint8_t>()), salt);
  rewrite([&](nlohmann::json& n) { n["measurement_salt"] = crypto::HexEncode(flipped); });
  ASSERT_TRUE(volume::WriteNodeState(image, dek, salt).ok());
  read = volume::ReadNodeState(image, dek);
  ASSERT_TRUE(read.ok()) << read.status();
  EXPECT_EQ(read->value_or(std::vector<uint8_t>()), salt);
}

// The LUKS1 peers: qemu-img and nbdkit's luks filter, both ways, with the passphrase
// `keywarden derive disk-key` prints (LUKS1's passphrase is the DEK in hex).
// StartNbdkit serves `image` through nbdkit's luks filter on a unix socket; returns its pid.
pid_t StartNbdkit(const fs::path& socket, const fs::path& pid_file, const fs::path& image,
                  const fs::path& pass) {
  fs::remove(socket);
  fs::remove(pid_file);
  const RunResult start =
      Exec({"nbdkit", "-U", socket.string(), "-P", pid_file.string(), "--filter=luks", "file",
            image.string(), "passphrase=+" + pass.string()});
  EXPECT_TRUE(start.ok()) << start;
  // nbdkit writes its pid file once it listens.
  for (int i = 0; i < 500; ++i) {
    const std::string pid = ReadFile(pid_file).value_or("");
    if (!pid.empty() && pid.back() == '\n' && fs::exists(socket)) return std::atoi(pid.c_str());
    std::this_thread::sleep_for(10ms);
  }
  ADD_FAILURE() << "nbdkit did not start";
  return -1;
}

void StopNbdkit(pid_t pid) {
  if (pid <= 0) return;
  kill(pid, SIGTERM);
  for (int i = 0; i < 500 && kill(pid, 0) == 0; ++i) std::this_thread::sleep_for(10ms);
}

class LuksOneInterop : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!VolumeEnv::Supported()) GTEST_SKIP() << "needs root and /dev/fuse";
    env_ = std::make_unique<VolumeEnv>();
    image_ = env_->Image("l1.img", 20);
    const RunResult r = env_->Format(image_, {"--type", "luks1"});
    ASSERT_TRUE(r.ok()) << r;
    ASSERT_THAT(r.stdout_text, HasSubstr("type luks1"));
    ASSERT_THAT(r.stdout_text, HasSubstr("sector-size 512"));
    const std::string uuid = env_->Field(image_, "uuid");
    const RunResult key = Exec({KEYWARDEN_BINARY, "derive", "disk-key", "--master-secret",
                                env_->secret().string(), "--uuid", uuid});
    ASSERT_TRUE(key.ok()) << key;
    ASSERT_EQ(HexOf(env_->Dek(uuid)) + "\n", key.stdout_text);
    pass_ = env_->temp().WriteFile("pass.txt", key.stdout_text.substr(0, 64));
    data_size_ = fs::file_size(image_) - 2 * 1024 * 1024;
  }
  std::unique_ptr<VolumeEnv> env_;
  fs::path image_, pass_;
  uint64_t data_size_ = 0;
};

TEST_F(LuksOneInterop, QemuImgBothWays) {
  const std::string image_opts = "driver=luks,key-secret=s0,file.filename=" + image_.string();
  const std::string secret = "secret,id=s0,file=" + pass_.string();
  // qemu writes, Keywarden reads.
  const fs::path in = env_->temp().WriteFile("in.raw", RandomText(data_size_, 11));
  const RunResult write = Exec({"qemu-img", "convert", "-n", "--object", secret, "-f", "raw",
                                in.string(), "--target-image-opts", image_opts});
  ASSERT_TRUE(write.ok()) << write;
  fs::path plain = env_->Open(image_, "q");
  EXPECT_EQ(FileHash(plain), FileHash(in));
  // Keywarden writes, qemu reads.
  const std::string data = RandomText(data_size_, 12);
  WriteAt(plain, 0, data);
  ASSERT_TRUE(env_->Close("q").ok());
  const fs::path out = env_->temp() / "out.raw";
  const RunResult read = Exec({"qemu-img", "convert", "--object", secret, "--image-opts",
                               image_opts, "-O", "raw", out.string()});
  ASSERT_TRUE(read.ok()) << read;
  EXPECT_EQ(FileHash(out), Sha256Hex(data));
}

TEST_F(LuksOneInterop, NbdkitLuksFilterBothWays) {
  const fs::path socket = env_->temp() / "nbd.sock";
  const fs::path pid_file = env_->temp() / "nbdkit.pid";
  const std::string uri = "nbd+unix:///?socket=" + socket.string();
  // nbdkit writes, Keywarden reads.
  const fs::path in = env_->temp().WriteFile("in.raw", RandomText(data_size_, 21));
  pid_t nbdkit = StartNbdkit(socket, pid_file, image_, pass_);
  const RunResult write = Exec({"nbdcopy", in.string(), uri});
  StopNbdkit(nbdkit);
  ASSERT_TRUE(write.ok()) << write;
  fs::path plain = env_->Open(image_, "n");
  EXPECT_EQ(FileHash(plain), FileHash(in));
  // Keywarden writes, nbdkit reads.
  const std::string data = RandomText(data_size_, 22);
  WriteAt(plain, 0, data);
  ASSERT_TRUE(env_->Close("n").ok());
  nbdkit = StartNbdkit(socket, pid_file, image_, pass_);
  const fs::path out = env_->temp() / "out.raw";
  const RunResult read = Exec({"nbdcopy", uri, out.string()});
  StopNbdkit(nbdkit);
  ASSERT_TRUE(read.ok()) << read;
  EXPECT_EQ(FileHash(out), Sha256Hex(data));
}

TEST(VolumeTest, NoKeyMaterialInOutputOrLogs) {
  REQUIRE_ROOT_AND_FUSE();
  VolumeEnv env;
  const fs::path image = env.Image("v.img", 20);
  const RunResult format = env.Format(image);
  ASSERT_TRUE(format.ok());
  const std::string uuid = env.Field(image, "uuid");
  const fs::path plain = env.Open(image, "quiet");
  WriteAt(plain, 0, RandomText(8192, 5));
  ASSERT_TRUE(env.Close("quiet").ok());
  const std::string dek_hex = HexOf(env.Dek(uuid));
  std::string everything = format.stdout_text + format.stderr_text +
                           env.Kw({"volume", "status", image.string()}).stdout_text +
                           ReadFile(env.run_dir() / "volumes" / "quiet.log").value_or("") +
                           env.server().stderr_text();
  EXPECT_EQ(everything.find(dek_hex.substr(0, 16)), std::string::npos);
}

}  // namespace
}  // namespace keywarden::testing
