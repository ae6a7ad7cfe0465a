// cli/help_format.h — `spare --help` lists each subcommand with the first
// sentence of its description; `spare CMD --help` shows the whole paragraph
// wrapped to the terminal-friendly width.
#pragma once

#include <CLI/CLI.hpp>
#include <string>

namespace spare::cli {

class HelpFormatter : public CLI::Formatter {
 public:
  std::string make_subcommand(const CLI::App* sub) const override;
  std::string make_description(const CLI::App* app) const override;
};

// Word-wraps `text` at `width` columns, keeping its own line breaks.
std::string Wrap(const std::string& text, size_t width);

}  // namespace spare::cli
