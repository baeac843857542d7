// End-to-end tests of attested key release with real parts: `keywarden serve` with its join
// service, several swtpm TPMs as nodes (each with a local-CA EK certificate), state disks as
// LUKS2 files served through FUSE, and the `keywarden node`, `recover` and `verify` commands as
// users run them. Needs root and /dev/fuse (FUSE mounts); skips otherwise.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <sstream>

#include "keywarden/attest/tpm.h"
#include "keywarden/crypto/encoding.h"
#include "keywarden/keys/cluster.h"
#include "tests/file_io.h"
#include "tests/service_process.h"
#include "tests/subprocess.h"
#include "tests/swtpm.h"

namespace keywarden::testing {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;
using ::testing::HasSubstr;

RunResult Exec(std::vector<std::string> argv) { return keywarden::testing::Run(std::move(argv)); }

bool Supported() { return geteuid() == 0 && access("/dev/fuse", R_OK | W_OK) == 0; }

// StartKeywarden runs `keywarden ARGS...` in the background: standard output captured for
// WaitLine, standard error in `log`.
Background StartKeywarden(std::vector<std::string> args, const fs::path& log) {
  args.insert(args.begin(), KEYWARDEN_BINARY);
  BackgroundOptions options;
  options.log = log;
  options.capture_stdout = true;
  Background process;
  EXPECT_TRUE(process.Start(std::move(args), options));
  return process;
}

// World is one test's clusters and nodes; it closes every volume it opened.
class World {
 public:
  World() : ca_(std::make_shared<SwtpmCa>()) {}
  ~World() {
    for (const auto& name : opened_) {
      Kw({"volume", "close", name, "--run-dir", run_dir().string()});
    }
  }
  fs::path run_dir() const { return temp_ / "run"; }
  const TempDir& temp() const { return temp_; }
  std::shared_ptr<SwtpmCa> ca() const { return ca_; }

  RunResult Kw(std::vector<std::string> args) {
    args.insert(args.begin(), KEYWARDEN_BINARY);
    return Exec(args);
  }

  // NewCluster runs `keywarden init` in DIR.
  fs::path NewCluster(const std::string& name) {
    const fs::path dir = temp_ / name;
    const RunResult r = Kw({"init", "--dir", dir.string()});
    EXPECT_TRUE(r.ok()) << r;
    return dir;
  }
  std::string ClusterIdHex(const fs::path& dir) {
    auto info = keys::ReadClusterInfo(dir);
    EXPECT_TRUE(info.ok()) << info.status();
    return info.ok() ? crypto::HexEncode(info->cluster_id) : "";
  }

  // Measurements writes the base measurements of a fresh node (all swtpm nodes boot alike).
  fs::path Measurements(const SwtpmInstance& tpm) {
    const fs::path path = temp_ / "measurements.json";
    const RunResult r = Kw({"measurements", "read", "--tpm", tpm.tcti()});
    EXPECT_TRUE(r.ok()) << r;
    temp_.WriteFile("measurements.json", r.stdout_text);
    return path;
  }

  std::unique_ptr<ServiceProcess> Serve(const fs::path& dir, const fs::path& measurements) {
    auto server = std::make_unique<ServiceProcess>(
        std::vector<std::string>{"--dir", dir.string(), "--join-listen", "127.0.0.1:0",
                                 "--measurements", measurements.string(), "--ek-ca",
                                 ca_->ca_bundle().string(), "--audit-log",
                                 (dir / "audit.log").string()},
        dir / "serve.log");
    EXPECT_TRUE(server->Start()) << server->stderr_text();
    EXPECT_FALSE(server->join_endpoint().empty());
    return server;
  }

  fs::path Disk(const std::string& name) {
    temp_.WriteFile(name, "");
    fs::resize_file(temp_ / name, 48ull << 20);
    return temp_ / name;
  }
  fs::path FuseDir(const std::string& name) {
    const fs::path dir = temp_ / ("mnt-" + name);
    fs::create_directories(dir);
    return dir;
  }

  // Join runs `keywarden node join`; the state disk is served through FUSE as NAME.
  RunResult Join(const SwtpmInstance& tpm, const std::string& endpoint, const fs::path& disk,
                 const std::string& name, std::vector<std::string> extra = {}) {
    std::vector<std::string> args{"node",
                                  "join",
                                  "--join-endpoint",
                                  endpoint,
                                  "--tpm",
                                  tpm.tcti(),
                                  "--state-disk",
                                  disk.string(),
                                  "--name",
                                  name,
                                  "--fuse-dir",
                                  FuseDir(name).string(),
                                  "--run-dir",
                                  run_dir().string(),
                                  "--pbkdf",
                                  "pbkdf2",
                                  "--pbkdf-iterations",
                                  "1000"};
    if (std::find(extra.begin(), extra.end(), "--timeout") == extra.end()) {
      extra.insert(extra.end(), {"--timeout", "60"});
    }
    args.insert(args.end(), extra.begin(), extra.end());
    RunResult r = Kw(args);
    if (r.ok()) opened_.push_back(name);
    return r;
  }
  RunResult Close(const std::string& name) {
    RunResult r = Kw({"volume", "close", name, "--run-dir", run_dir().string()});
    if (r.ok()) std::erase(opened_, name);
    return r;
  }
  void Opened(const std::string& name) { opened_.push_back(name); }

 private:
  TempDir temp_;
  std::shared_ptr<SwtpmCa> ca_;
  std::vector<std::string> opened_;
};

// Line returns what follows `prefix` on a line of `text` starting with it.
std::string Line(const std::string& text, std::string_view prefix) {
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) {
    if (line.rfind(prefix, 0) == 0) return line.substr(prefix.size());
  }
  return "";
}

std::string Pcr15(const SwtpmInstance& tpm) {
  auto opened = attest::Tpm::Open(tpm.tcti());
  EXPECT_TRUE(opened.ok()) << opened.status();
  if (!opened.ok()) return "";
  auto bank = (*opened)->ReadPcrs();
  EXPECT_TRUE(bank.ok()) << bank.status();
  return bank.ok() ? crypto::HexEncode((*bank)[15]) : "";
}

std::string ExpectedPcr15(World& world, const std::string& cluster_id) {
  const RunResult r = world.Kw({"derive", "pcr15", "--cluster-id", cluster_id});
  EXPECT_TRUE(r.ok()) << r;
  return Line(r.stdout_text + "\n", "").substr(0, 64);
}

TEST(NodeJoin, AFreshNodeJoinsMeasuresItsClusterAndRejoinsAfterAReboot) {
  if (!Supported()) GTEST_SKIP() << "needs root and /dev/fuse";
  World world;
  SwtpmInstance tpm(world.ca());
  ASSERT_TRUE(tpm.Start());
  const fs::path cluster = world.NewCluster("a");
  auto server = world.Serve(cluster, world.Measurements(tpm));
  const std::string cluster_id = world.ClusterIdHex(cluster);
  const fs::path disk = world.Disk("node1.img");

  RunResult r = world.Join(tpm, server->join_endpoint(), disk, "n1");
  ASSERT_TRUE(r.ok()) << r << server->stderr_text();
  EXPECT_THAT(r.stdout_text, HasSubstr("joined (first boot)"));
  EXPECT_EQ(Line(r.stdout_text, "cluster-id "), cluster_id);
  EXPECT_EQ(Pcr15(tpm), ExpectedPcr15(world, cluster_id));
  const fs::path plain = world.FuseDir("n1") / "n1";
  ASSERT_TRUE(fs::exists(plain)) << r;
  // The state disk is a Keywarden volume whose key id is its UUID and which keeps the salt.
  const RunResult status = world.Kw({"volume", "status", disk.string()});
  EXPECT_TRUE(status.ok()) << status;
  EXPECT_THAT(status.stdout_text, HasSubstr("measurement-salt "));
  EXPECT_THAT(status.stdout_text,
              HasSubstr(Line(r.stdout_text, "joined (first boot) state disk ")));

  const std::string data = RandomText(1 << 20, 7);
  WriteAt(plain, 4 << 20, data);
  ASSERT_TRUE(world.Close("n1").ok());

  // Without a reboot PCR 15 is set: the node refuses to join again, and changes nothing.
  const std::string header_before = ReadAt(disk, 0, 16 << 20);
  r = world.Join(tpm, server->join_endpoint(), disk, "n1");
  EXPECT_EQ(r.exit_code, 1) << r;
  EXPECT_THAT(r.stderr_text, HasSubstr("PCR 15 is already set"));
  EXPECT_EQ(ReadAt(disk, 0, 16 << 20), header_before);

  // After a reboot it rejoins: same disk, same key, data intact, PCR 15 measured again.
  ASSERT_TRUE(tpm.Restart());
  r = world.Join(tpm, server->join_endpoint(), disk, "n1");
  ASSERT_TRUE(r.ok()) << r << server->stderr_text();
  EXPECT_THAT(r.stdout_text, HasSubstr("rejoined state disk"));
  EXPECT_EQ(Pcr15(tpm), ExpectedPcr15(world, cluster_id));
  EXPECT_EQ(ReadAt(plain, 4 << 20, data.size()), data);
  ASSERT_TRUE(world.Close("n1").ok());

  // A node told to expect another cluster refuses the ticket before touching its disk.
  ASSERT_TRUE(tpm.Restart());
  r = world.Join(tpm, server->join_endpoint(), disk, "n1", {"--cluster-id", std::string(64, 'a')});
  EXPECT_EQ(r.exit_code, 1) << r;
  EXPECT_THAT(r.stderr_text, HasSubstr("not aaaa"));
  EXPECT_EQ(Pcr15(tpm), std::string(64, '0'));

  // The audit log recorded both releases for this node, without key bytes.
  const std::string audit = ReadFile(cluster / "audit.log").value_or("");
  EXPECT_THAT(audit, HasSubstr("\"join\""));
  EXPECT_THAT(audit, HasSubstr("\"rejoin\""));
}

TEST(NodeJoin, ANodeOfAnotherClusterOrWithOtherMeasurementsIsRefused) {
  if (!Supported()) GTEST_SKIP() << "needs root and /dev/fuse";
  World world;
  SwtpmInstance good(world.ca()), junk(world.ca());
  ASSERT_TRUE(good.Start());
  ASSERT_TRUE(junk.Start());
  const fs::path measurements = world.Measurements(good);
  const fs::path a = world.NewCluster("a");
  auto server = world.Serve(a, measurements);
  // PCR 4 (boot loader) extended with junk: the join service refuses it; nothing is written.
  const RunResult ext = junk.Tpm2Tool({"tpm2_pcrextend", "4:sha256=" + std::string(64, 'e')});
  ASSERT_TRUE(ext.ok()) << ext;
  const fs::path disk = world.Disk("junk.img");
  const RunResult r = world.Join(junk, server->join_endpoint(), disk, "junk");
  EXPECT_EQ(r.exit_code, 1) << r;
  EXPECT_THAT(r.stderr_text, HasSubstr("refused this client's attestation"));
  EXPECT_EQ(ReadAt(disk, 0, 4096), std::string(4096, '\0'));
  EXPECT_EQ(Pcr15(junk), std::string(64, '0'));
  EXPECT_THAT(ReadFile(a / "audit.log").value_or(""), HasSubstr("PCR 4"));

  // A state disk of cluster A does not rejoin cluster B (another master secret): the key B
  // releases does not open it.
  const fs::path disk_a = world.Disk("good.img");
  ASSERT_TRUE(world.Join(good, server->join_endpoint(), disk_a, "good").ok());
  ASSERT_TRUE(world.Close("good").ok());
  const fs::path b = world.NewCluster("b");
  auto server_b = world.Serve(b, measurements);
  ASSERT_TRUE(good.Restart());
  const RunResult other = world.Join(good, server_b->join_endpoint(), disk_a, "good");
  EXPECT_EQ(other.exit_code, 1) << other;
  EXPECT_THAT(other.stderr_text, HasSubstr("wrong key"));
  EXPECT_EQ(Pcr15(good), std::string(64, '0'));
}

TEST(NodeVerify, PassesForAMemberAndFailsForANodeOfAnotherClusterOrAFreshOne) {
  if (!Supported()) GTEST_SKIP() << "needs root and /dev/fuse";
  World world;
  SwtpmInstance member(world.ca()), stranger(world.ca()), fresh(world.ca());
  ASSERT_TRUE(member.Start());
  ASSERT_TRUE(stranger.Start());
  ASSERT_TRUE(fresh.Start());
  const fs::path measurements = world.Measurements(member);
  const fs::path a = world.NewCluster("a"), b = world.NewCluster("b");
  auto server_a = world.Serve(a, measurements);
  auto server_b = world.Serve(b, measurements);
  ASSERT_TRUE(world.Join(member, server_a->join_endpoint(), world.Disk("m.img"), "m").ok());
  ASSERT_TRUE(world.Join(stranger, server_b->join_endpoint(), world.Disk("s.img"), "s").ok());
  const std::string id_a = world.ClusterIdHex(a);

  int verifications = 0;  // each run gets its own log
  auto verify = [&](const SwtpmInstance& tpm, const std::string& cluster_id,
                    const fs::path& m) -> RunResult {
    Background server = StartKeywarden(
        {"node", "verification-server", "--tpm", tpm.tcti(), "--listen", "127.0.0.1:0"},
        world.temp() / ("verify-" + std::to_string(++verifications) + ".log"));
    const std::string endpoint =
        server.WaitLine("verification server listening on ", 60s).value_or("");
    EXPECT_FALSE(endpoint.empty()) << server.Log();
    RunResult r =
        world.Kw({"verify", "--endpoint", endpoint, "--measurements", m.string(), "--ek-ca",
                  world.ca()->ca_bundle().string(), "--cluster-id", cluster_id});
    server.Signal(SIGTERM);
    EXPECT_EQ(server.Wait(60s), 0) << server.Log();
    return r;
  };
  RunResult r = verify(member, id_a, measurements);
  EXPECT_TRUE(r.ok()) << r;
  EXPECT_THAT(r.stdout_text, HasSubstr("verified"));
  r = verify(stranger, id_a, measurements);
  EXPECT_EQ(r.exit_code, 1) << r;
  EXPECT_THAT(r.stderr_text, HasSubstr("PCR 15"));
  r = verify(fresh, id_a, measurements);
  EXPECT_EQ(r.exit_code, 1) << r;
  EXPECT_THAT(r.stderr_text, HasSubstr("PCR 15 is zero"));
  // Base measurements the member does not meet.
  std::string text = ReadFile(measurements).value_or("");
  const size_t at = text.find("\"4\"");
  ASSERT_NE(at, std::string::npos);
  const size_t hex = text.find("\"expected\"", at) + 12;
  text[hex + 1] = text[hex + 1] == 'f' ? '0' : 'f';
  world.temp().WriteFile("other.json", text);
  r = verify(member, id_a, world.temp() / "other.json");
  EXPECT_EQ(r.exit_code, 1) << r;
  EXPECT_THAT(r.stderr_text, HasSubstr("PCR 4"));
  // An EK from an unknown CA.
  SwtpmInstance foreign;  // its own CA
  ASSERT_TRUE(foreign.Start());
  r = verify(foreign, id_a, measurements);
  EXPECT_EQ(r.exit_code, 1) << r;
  EXPECT_THAT(r.stderr_text, HasSubstr("EK certificate"));
}

TEST(NodeRecovery, AStoppedClusterRecoversWithTheMasterSecretAndThenRejoinsNormally) {
  if (!Supported()) GTEST_SKIP() << "needs root and /dev/fuse";
  World world;
  std::vector<std::unique_ptr<SwtpmInstance>> nodes;
  for (int i = 0; i < 2; ++i) {
    nodes.push_back(std::make_unique<SwtpmInstance>(world.ca()));
    ASSERT_TRUE(nodes.back()->Start());
  }
  const fs::path measurements = world.Measurements(*nodes[0]);
  const fs::path a = world.NewCluster("a");
  const fs::path other = world.NewCluster("other");
  const std::string id = world.ClusterIdHex(a);
  const std::string expected_pcr15 = ExpectedPcr15(world, id);
  auto server = world.Serve(a, measurements);
  std::vector<fs::path> disks;
  std::vector<std::string> data;
  for (size_t i = 0; i < nodes.size(); ++i) {
    const std::string name = "n" + std::to_string(i);
    disks.push_back(world.Disk(name + ".img"));
    ASSERT_TRUE(world.Join(*nodes[i], server->join_endpoint(), disks[i], name).ok());
    data.push_back(RandomText(256 << 10, 100 + i));
    WriteAt(world.FuseDir(name) / name, 1 << 20, data[i]);
    ASSERT_TRUE(world.Close(name).ok());
  }

  // The whole cluster stops: the key service and every node.
  const std::string join_endpoint = server->join_endpoint();
  server->Stop();
  for (auto& node : nodes) ASSERT_TRUE(node->Restart());
  // Nodes cannot rejoin; nothing changes on them.
  RunResult r = world.Join(*nodes[0], join_endpoint, disks[0], "n0", {"--timeout", "3"});
  EXPECT_EQ(r.exit_code, 1) << r;
  EXPECT_THAT(r.stderr_text, HasSubstr("cannot connect"));
  EXPECT_EQ(Pcr15(*nodes[0]), std::string(64, '0'));

  for (size_t i = 0; i < nodes.size(); ++i) {
    const std::string name = "n" + std::to_string(i);
    Background recovery = StartKeywarden(
        {"node", "recovery-server", "--tpm", nodes[i]->tcti(), "--listen", "127.0.0.1:0",
         "--state-disk", disks[i].string(), "--name", name, "--fuse-dir",
         world.FuseDir(name).string(), "--run-dir", world.run_dir().string()},
        world.temp() / ("recovery-" + name + ".log"));
    const std::string endpoint =
        recovery.WaitLine("recovery server listening on ", 60s).value_or("");
    ASSERT_FALSE(endpoint.empty()) << recovery.Log();
    auto recover = [&](const fs::path& secret) {
      return world.Kw({"recover", "--endpoint", endpoint, "--master-secret", secret.string(),
                       "--measurements", measurements.string(), "--ek-ca",
                       world.ca()->ca_bundle().string(), "--cluster-id", id});
    };
    if (i == 0) {
      // Another cluster's master secret: the node refuses the key, measures nothing, waits on.
      r = recover(other / "mastersecret.json");
      EXPECT_EQ(r.exit_code, 1) << r;
      EXPECT_THAT(r.stderr_text, HasSubstr("does not open"));
    }
    r = recover(a / "mastersecret.json");
    ASSERT_TRUE(r.ok()) << r << recovery.Log();
    EXPECT_EQ(Line(r.stdout_text, "cluster-id "), id);
    EXPECT_EQ(recovery.WaitLine("cluster-id ", 60s).value_or(""), id) << recovery.Log();
    EXPECT_EQ(recovery.Wait(60s), 0) << recovery.Log();
    world.Opened(name);
    EXPECT_EQ(Pcr15(*nodes[i]), expected_pcr15);
    EXPECT_EQ(ReadAt(world.FuseDir(name) / name, 1 << 20, data[i].size()), data[i]);
    ASSERT_TRUE(world.Close(name).ok());
  }

  // The key service comes back; after a reboot the nodes rejoin normally.
  auto back = world.Serve(a, measurements);
  for (size_t i = 0; i < nodes.size(); ++i) {
    const std::string name = "n" + std::to_string(i);
    ASSERT_TRUE(nodes[i]->Restart());
    r = world.Join(*nodes[i], back->join_endpoint(), disks[i], name);
    ASSERT_TRUE(r.ok()) << r << back->stderr_text();
    EXPECT_THAT(r.stdout_text, HasSubstr("rejoined"));
    EXPECT_EQ(Pcr15(*nodes[i]), expected_pcr15);
    EXPECT_EQ(ReadAt(world.FuseDir(name) / name, 1 << 20, data[i].size()), data[i]);
    ASSERT_TRUE(world.Close(name).ok());
  }
}

TEST(NodeRecovery, TheOperatorRefusesANodeThatDoesNotAttest) {
  if (!Supported()) GTEST_SKIP() << "needs root and /dev/fuse";
  World world;
  SwtpmInstance good(world.ca()), junk(world.ca());
  ASSERT_TRUE(good.Start());
  ASSERT_TRUE(junk.Start());
  const fs::path measurements = world.Measurements(good);
  const fs::path a = world.NewCluster("a");
  const fs::path disk = world.Disk("junk.img");
  {
    auto server = world.Serve(a, measurements);
    ASSERT_TRUE(world.Join(junk, server->join_endpoint(), disk, "junk").ok());
    ASSERT_TRUE(world.Close("junk").ok());
  }
  ASSERT_TRUE(junk.Restart());
  ASSERT_TRUE(junk.Tpm2Tool({"tpm2_pcrextend", "4:sha256=" + std::string(64, 'e')}).ok());
  Background recovery =
      StartKeywarden({"node", "recovery-server", "--tpm", junk.tcti(), "--listen", "127.0.0.1:0",
                      "--state-disk", disk.string(), "--fuse-dir", world.FuseDir("junk").string(),
                      "--run-dir", world.run_dir().string()},
                     world.temp() / "recovery.log");
  const std::string endpoint = recovery.WaitLine("recovery server listening on ", 60s).value_or("");
  ASSERT_FALSE(endpoint.empty()) << recovery.Log();
  const RunResult r = world.Kw(
      {"recover", "--endpoint", endpoint, "--master-secret", (a / "mastersecret.json").string(),
       "--measurements", measurements.string(), "--ek-ca", world.ca()->ca_bundle().string()});
  EXPECT_EQ(r.exit_code, 1) << r;
  EXPECT_THAT(r.stderr_text, HasSubstr("PCR 4"));
  recovery.Signal(SIGTERM);
  EXPECT_EQ(recovery.Wait(60s), 1) << recovery.Log();
  EXPECT_THAT(recovery.Log(), HasSubstr("stopped before a recovery"));
}

}  // namespace
}  // namespace keywarden::testing
