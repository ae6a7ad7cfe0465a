#include "cli/help_format.h"

#include <sstream>

namespace spare::cli {
namespace {

constexpr size_t kWidth = 90;

std::string FirstSentence(const std::string& text) {
  size_t end = text.find(". ");
  return end == std::string::npos ? text : text.substr(0, end + 1);
}

}  // namespace

std::string Wrap(const std::string& text, size_t width) {
  std::string out;
  std::istringstream lines(text);
  std::string line;
  while (std::getline(lines, line)) {
    size_t indent = line.find_first_not_of(' ');
    if (indent == std::string::npos) {
      out += "\n";
      continue;
    }
    std::istringstream words(line);
    std::string word, current(indent, ' ');
    while (words >> word) {
      if (current.size() > indent && current.size() + 1 + word.size() > width) {
        out += current + "\n";
        current.assign(indent, ' ');
      }
      if (current.size() > indent) current += ' ';
      current += word;
    }
    out += current + "\n";
  }
  return out;
}

std::string HelpFormatter::make_subcommand(const CLI::App* sub) const {
  std::stringstream out;
  CLI::detail::format_help(out, sub->get_display_name(true), FirstSentence(sub->get_description()),
                           column_width_);
  return out.str();
}

std::string HelpFormatter::make_description(const CLI::App* app) const {
  const std::string& text = app->get_description();
  if (text.empty()) return {};
  return Wrap(text, kWidth) + "\n";
}

}  // namespace spare::cli
