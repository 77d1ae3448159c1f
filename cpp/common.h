// common.h — the error model and small helpers shared by every module.
//
// Errors (the same names exist in Python, see python/aircache_cpp/_core.cpp):
//   FormatError       a malformed file (bad magic, truncated, inconsistent sizes, ...)   -> ValueError
//   UnsupportedError  a valid file or request this runtime does not support             -> ValueError
//   InputError        bad arguments: images, prompts, budgets, option names, ...        -> ValueError
//   IOError           the operating system refused (file missing, unreadable)           -> OSError
//   OutOfMemory       an allocation (host or device) failed; says bytes asked and free  -> MemoryError
// Bugs are assertions; bad input is one of the above, with a message that names the file, the
// field and the bad value, and says what would be valid.
#pragma once

#include <cstdarg>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

namespace aircache {

class Error : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

class FormatError : public Error {
public:
    using Error::Error;
};

class UnsupportedError : public Error {
public:
    using Error::Error;
};

class InputError : public Error {
public:
    using Error::Error;
};

class OutOfMemory : public Error {
public:
    using Error::Error;
};

class IOError : public Error {
public:
    IOError(int err, std::string path, const std::string& what)
        : Error(what), err_(err), path_(std::move(path)) {}
    int err() const { return err_; }
    const std::string& path() const { return path_; }

private:
    int err_;
    std::string path_;
};

// printf-style formatting into a std::string.
std::string strprintf(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
std::string vstrprintf(const char* fmt, va_list ap);

// A string from a file, made safe to print in a message: bytes outside printable ASCII become \xNN and
// anything past `max_len` bytes is cut with "...".
std::string printable(std::string_view s, size_t max_len = 80);

// Human-readable byte count ("1.50 MiB").
std::string format_bytes(uint64_t n);

// Per-thread scratch (a thread_local vector reused across calls, so each call does not take fresh
// pages) is given back once it holds more than `keep` bytes: a long prompt's buffers are not kept
// through the decode.
template <class T>
void trim_scratch(std::vector<T>& v, size_t keep = size_t(8) << 20) {
    if (v.capacity() * sizeof(T) > keep) std::vector<T>().swap(v);
}

}  // namespace aircache
