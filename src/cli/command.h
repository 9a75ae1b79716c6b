// Each subcommand lives in src/cli/commands/<name>.cpp and registers itself:
//
//   static hwaga::cli::Command reg("encode", "Encode images into code arrays", [](CLI::App& sub) {
//     auto opt = std::make_shared<EncodeOptions>();   // typed options, one struct per command
//     sub.add_option("-m,--model", opt->model, "...")->required();
//     return [opt] { return run_encode(*opt); };        // returns the exit code
//   });
//
// main() builds the CLI11 app from the registry; errors (hwaga::Error) print "hwaga CMD: message"
// and exit 1; bad options exit 2 with CLI11's message.
#pragma once
#include <CLI/CLI.hpp>
#include <functional>
#include <string>

namespace hwaga::cli {

using Runner = std::function<int()>;
using Setup = std::function<Runner(CLI::App&)>;

struct Command {
  Command(std::string name, std::string help, Setup setup);
};

struct CommandEntry {
  std::string name, help;
  Setup setup;
};
std::vector<CommandEntry>& command_registry();

// Options every command shares: --threads N (0 = all cores), --device cpu|cuda|auto.
struct CommonOptions {
  int threads = 0;
  std::string device = "auto";
};
// Adds --threads/--device to a subcommand; apply_common() sets the thread pool.
void add_common_options(CLI::App& sub, CommonOptions& opt);
void apply_common(const CommonOptions& opt);

}  // namespace hwaga::cli
