// check.h — broken invariants abort with a message naming the condition.
#pragma once

#include <cstdio>
#include <cstdlib>

#define SPARE_CHECK(cond)                                                        \
  do {                                                                           \
    if (!(cond)) {                                                               \
      std::fprintf(stderr, "spare: CHECK failed at %s:%d: %s\n", __FILE__, __LINE__, \
                   #cond);                                                       \
      std::abort();                                                              \
    }                                                                            \
  } while (0)
