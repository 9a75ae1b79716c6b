// hwaga: the command. Subcommands register themselves (src/cli/command.h).
#include <algorithm>
#include <cstdio>
#include <exception>

#include "command.h"
#include "commands/progress.h"
#include "core/error.h"
#include "core/threads.h"

namespace hwaga::cli {

std::vector<CommandEntry>& command_registry() {
  static std::vector<CommandEntry> r;
  return r;
}

Command::Command(std::string name, std::string help, Setup setup) {
  command_registry().push_back({std::move(name), std::move(help), std::move(setup)});
}

void add_common_options(CLI::App& sub, CommonOptions& opt) {
  sub.add_option("--threads", opt.threads, "CPU threads (0 = all cores)")->check(CLI::NonNegativeNumber);
  sub.add_option("--device", opt.device, "cpu, cuda or auto")->check(CLI::IsMember({"cpu", "cuda", "auto"}));
}

void apply_common(const CommonOptions& opt) { set_num_threads(opt.threads); }

}  // namespace hwaga::cli

int main(int argc, char** argv) {
  using namespace hwaga::cli;
  start_signal_thread();  // before any thread: Ctrl-C and SIGTERM go to one waiting thread
  CLI::App app{"hwaga: text-to-image with RQ-Transformer and minDALL-E models"};
  app.require_subcommand(1);
  auto& reg = command_registry();
  std::sort(reg.begin(), reg.end(), [](auto& a, auto& b) { return a.name < b.name; });
  std::vector<std::pair<CLI::App*, Runner>> runners;
  for (auto& c : reg) {
    CLI::App* sub = app.add_subcommand(c.name, c.help);
    runners.emplace_back(sub, c.setup(*sub));
  }
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    int rc = app.exit(e);
    return rc == 0 ? 0 : 2;
  }
  for (auto& [sub, run] : runners) {
    if (!sub->parsed()) continue;
    try {
      return run();
    } catch (const hwaga::Error& e) {
      std::fprintf(stderr, "hwaga %s: error: %s\n", sub->get_name().c_str(), e.what());
      return 1;
    } catch (const std::exception& e) {
      std::fprintf(stderr, "hwaga %s: error: %s\n", sub->get_name().c_str(), e.what());
      return 1;
    }
  }
  return 2;
}
