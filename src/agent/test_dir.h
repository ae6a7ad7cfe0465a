// agent/test_dir.h — scratch directories and an in-process agent for the
// agent's unit tests (test-only; not part of spare_agent).
#pragma once

#include <gtest/gtest.h>
#include <stdlib.h>

#include <filesystem>
#include <memory>
#include <string>
#include <system_error>

#include "agent/agent.h"

namespace spare::agent {

// mkdtemp("/tmp/PREFIX-XXXXXX"), removed with everything in it on
// destruction. path() is empty when mkdtemp failed.
class TestDir {
 public:
  explicit TestDir(const std::string& prefix) {
    std::string t = "/tmp/" + prefix + "-XXXXXX";
    if (::mkdtemp(t.data())) path_ = t;
  }
  ~TestDir() {
    std::error_code ec;
    if (!path_.empty()) std::filesystem::remove_all(path_, ec);
  }
  TestDir(const TestDir&) = delete;
  TestDir& operator=(const TestDir&) = delete;
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

// A fixture holding a scratch agent directory and (after Start) an agent
// on it, run by the test through PollOnce. The agent goes before the
// directory does.
class AgentDirTest : public ::testing::Test {
 protected:
  void SetUp() override { ASSERT_FALSE(dir_.empty()) << "mkdtemp failed"; }
  void TearDown() override { agent_.reset(); }

  // Creates the agent on dir_ from `o` (signals left alone); `launcher`
  // as Agent::Create takes it.
  Status Start(AgentOptions o = {}, std::unique_ptr<Launcher> launcher = nullptr) {
    o.dir = dir_;
    o.handle_signals = false;
    auto agent = Agent::Create(o, std::move(launcher));
    if (!agent.ok()) return agent.status();
    agent_ = std::move(agent).value();
    return Status::Ok();
  }

  TestDir tmp_{"spare-agent-test"};
  const std::string dir_ = tmp_.path();
  std::unique_ptr<Agent> agent_;
};

}  // namespace spare::agent
