#include "resp.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace kv {
namespace {

using namespace std::string_literals;

using Args = std::vector<std::string>;

struct Parsed {
  std::vector<Args> commands;
  std::string error;
  bool fatal = false;
  size_t consumed = 0;  // bytes consumed in total
};

// Feeds `input` in pieces of `chunk` bytes, like reads from a socket would.
Parsed ParseAll(std::string_view input, size_t chunk = SIZE_MAX, RespLimits limits = {}) {
  RequestParser parser(limits);
  Parsed out;
  std::string buf;
  size_t fed = 0;
  while (true) {
    ParseResult r = parser.Parse(buf);
    if (r.state == ParseState::kNeedMore) {
      if (fed == input.size()) return out;
      size_t n = std::min(chunk, input.size() - fed);
      buf.append(input.substr(fed, n));
      fed += n;
      continue;
    }
    if (r.state == ParseState::kError) {
      out.error = std::string(r.error);
      out.fatal = r.fatal;
      if (r.fatal) return out;
    } else if (!parser.args().empty()) {
      out.commands.emplace_back(parser.args().begin(), parser.args().end());
    }
    EXPECT_LE(r.consumed, buf.size());
    out.consumed += r.consumed;
    buf.erase(0, r.consumed);
  }
}

TEST(RespParserTest, MultibulkCommands) {
  const std::string in = "*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\nv\r\n\0x\r\n*1\r\n$4\r\nPING\r\n"s;
  for (size_t chunk : {SIZE_MAX, size_t{1}, size_t{3}, size_t{7}}) {
    Parsed p = ParseAll(in, chunk);
    ASSERT_EQ(p.commands.size(), 2u) << chunk;
    EXPECT_EQ(p.commands[0], (Args{"SET", "k", "v\r\n\0x"s}));  // binary safe
    EXPECT_EQ(p.commands[1], (Args{"PING"}));
    EXPECT_EQ(p.consumed, in.size());
    EXPECT_EQ(p.error, "");
  }
}

TEST(RespParserTest, EmptyAndZeroLengthArguments) {
  Parsed p = ParseAll("*0\r\n*-1\r\n*2\r\n$3\r\nGET\r\n$0\r\n\r\n\r\n");
  ASSERT_EQ(p.commands.size(), 1u);
  EXPECT_EQ(p.commands[0], (Args{"GET", ""}));
  EXPECT_EQ(p.error, "");
}

TEST(RespParserTest, InlineCommands) {
  Parsed p = ParseAll("PING\r\nset  key \"a b\\x41\\n\" 'it\\'s'\nGET k\r\n", 2);
  ASSERT_EQ(p.commands.size(), 3u);
  EXPECT_EQ(p.commands[0], (Args{"PING"}));
  EXPECT_EQ(p.commands[1], (Args{"set", "key", "a bA\n", "it's"}));
  EXPECT_EQ(p.commands[2], (Args{"GET", "k"}));
}

TEST(RespParserTest, BadInlineLineIsSkipped) {
  Parsed p = ParseAll("SET k \"unterminated\r\nPING\r\nECHO \"a\"b\r\nPING\r\n");
  EXPECT_EQ(p.error, "ERR Protocol error: unbalanced quotes in request");
  EXPECT_FALSE(p.fatal);
  EXPECT_EQ(p.commands, (std::vector<Args>{{"PING"}, {"PING"}}));
}

TEST(RespParserTest, NeedMoreConsumesNothing) {
  RequestParser parser;
  for (std::string_view part : {"*", "*2", "*2\r", "*2\r\n$3", "*2\r\n$3\r\nGET\r\n$1\r\nk",
                                "*2\r\n$3\r\nGET\r\n$1\r\nk\r", "PING"}) {
    parser.Reset();
    ParseResult r = parser.Parse(part);
    EXPECT_EQ(r.state, ParseState::kNeedMore) << part;
    EXPECT_EQ(r.consumed, 0u);
  }
}

struct BadCase {
  std::string input;
  std::string error;
};

TEST(RespParserTest, MalformedMultibulkIsFatal) {
  const std::vector<BadCase> cases = {
      {"*x\r\n", "ERR Protocol error: invalid multibulk length"},
      {"*1x\r\n", "ERR Protocol error: invalid multibulk length"},
      {"*+1\r\n", "ERR Protocol error: invalid multibulk length"},
      {"*99999999999999999999999\r\n", "ERR Protocol error: invalid multibulk length"},
      {"*2000000\r\n", "ERR Protocol error: invalid multibulk length"},  // huge count
      {"*1\r\n$-1\r\n", "ERR Protocol error: invalid bulk length"},
      {"*1\r\n$abc\r\n", "ERR Protocol error: invalid bulk length"},
      {"*1\r\n$\r\n", "ERR Protocol error: invalid bulk length"},
      {"*1\r\n$536870913\r\n", "ERR Protocol error: invalid bulk length"},  // > 512 MiB
      {"*1\r\n$9223372036854775808\r\n", "ERR Protocol error: invalid bulk length"},
      {"*1\r\n+PING\r\n", "ERR Protocol error: expected '$', got '+'"},
      {"*2\r\n$4\r\nPING\r\n:1\r\n", "ERR Protocol error: expected '$', got ':'"},
      {"*1\r\n\x01", "ERR Protocol error: expected '$', got '?'"},
      {"*1\r\n$4\r\nPINGxx", "ERR Protocol error: expected CRLF"},  // missing CRLF after data
      {"*1\n$4\r\nPING\r\n", "ERR Protocol error: invalid multibulk length"},
      {"*1\rx", "ERR Protocol error: expected CRLF"},
      {"*1\r\n$4\rxPING\r\n", "ERR Protocol error: expected CRLF"},
      {"*1\r\n$" + std::string(70000, '1'), "ERR Protocol error: invalid bulk length"},
      {"*" + std::string(70000, '1'), "ERR Protocol error: invalid multibulk length"},
      {"*12\x01", "ERR Protocol error: invalid multibulk length"},  // no need to wait for CR
      {"*1\r\n$5z", "ERR Protocol error: invalid bulk length"},
      {std::string(70000, 'a'), "ERR Protocol error: too big inline request"},
  };
  for (const BadCase& c : cases) {
    for (size_t chunk : {SIZE_MAX, size_t{1}}) {
      if (chunk == 1 && c.input.size() > 1000) continue;
      // A valid command before the bad one still parses.
      Parsed p = ParseAll("PING\r\n" + c.input, chunk);
      EXPECT_EQ(p.error, c.error) << c.input.substr(0, 40) << " chunk " << chunk;
      EXPECT_TRUE(p.fatal) << c.input.substr(0, 40);
      EXPECT_EQ(p.commands.size(), 1u) << c.input.substr(0, 40);
    }
  }
}

TEST(RespParserTest, ConfigurableLimits) {
  RespLimits limits;
  limits.max_bulk = 10;
  limits.max_multibulk = 3;
  EXPECT_EQ(ParseAll("*1\r\n$10\r\n0123456789\r\n", SIZE_MAX, limits).commands.size(), 1u);
  EXPECT_EQ(ParseAll("*1\r\n$11\r\n", SIZE_MAX, limits).error,
            "ERR Protocol error: invalid bulk length");
  EXPECT_EQ(ParseAll("*4\r\n", SIZE_MAX, limits).error,
            "ERR Protocol error: invalid multibulk length");
  EXPECT_EQ(ParseAll("a b c d\r\n", SIZE_MAX, limits).error,
            "ERR Protocol error: invalid multibulk length");
}

// A declared length is not trusted: a 512 MiB bulk header with no data
// costs nothing.
TEST(RespParserTest, DeclaredLengthIsNotReserved) {
  RequestParser parser;
  std::string buf = "*1000000\r\n$536870912\r\nabc";
  ParseResult r = parser.Parse(buf);
  EXPECT_EQ(r.state, ParseState::kNeedMore);
}

TEST(RespParserTest, ParseInt64LikeRedis) {
  int64_t v = 7;
  EXPECT_TRUE(ParseInt64("0", &v));
  EXPECT_EQ(v, 0);
  EXPECT_TRUE(ParseInt64("-42", &v));
  EXPECT_EQ(v, -42);
  EXPECT_TRUE(ParseInt64("9223372036854775807", &v));
  EXPECT_TRUE(ParseInt64("-9223372036854775808", &v));
  EXPECT_EQ(v, INT64_MIN);
  for (std::string_view bad : {"", "-", "+1", "01", "-0", " 1", "1 ", "1.5", "9223372036854775808",
                               "-9223372036854775809", "abc", "123456789012345678901"}) {
    EXPECT_FALSE(ParseInt64(bad, &v)) << bad;
  }
}

TEST(RespEncoderTest, Replies) {
  std::string out;
  AppendSimple(&out, "OK");
  AppendError(&out, "ERR bad\r\nthing");
  AppendInteger(&out, -12);
  AppendInteger(&out, INT64_MIN);
  AppendBulk(&out, std::string_view("a\0b", 3));
  AppendNullBulk(&out);
  AppendArrayHeader(&out, 2);
  AppendBulk(&out, "");
  AppendNullArray(&out);
  EXPECT_EQ(out,
            "+OK\r\n-ERR bad  thing\r\n:-12\r\n:-9223372036854775808\r\n$3\r\na\0b\r\n"
            "$-1\r\n*2\r\n$0\r\n\r\n*-1\r\n"s);
}

}  // namespace
}  // namespace kv
