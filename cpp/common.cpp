#include "common.h"

#include <cstdio>
#include <vector>

namespace aircache {

std::string vstrprintf(const char* fmt, va_list ap) {
    va_list ap2;
    va_copy(ap2, ap);
    char buf[256];
    int n = std::vsnprintf(buf, sizeof(buf), fmt, ap);
    std::string out;
    if (n < 0) {
        out = fmt;
    } else if (static_cast<size_t>(n) < sizeof(buf)) {
        out.assign(buf, static_cast<size_t>(n));
    } else {
        std::vector<char> big(static_cast<size_t>(n) + 1);
        std::vsnprintf(big.data(), big.size(), fmt, ap2);
        out.assign(big.data(), static_cast<size_t>(n));
    }
    va_end(ap2);
    return out;
}

std::string strprintf(const char* fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    std::string s = vstrprintf(fmt, ap);
    va_end(ap);
    return s;
}

std::string printable(std::string_view s, size_t max_len) {
    std::string out;
    size_t n = s.size() < max_len ? s.size() : max_len;
    out.reserve(n + 8);
    for (size_t i = 0; i < n; ++i) {
        unsigned char c = static_cast<unsigned char>(s[i]);
        if (c == '\\') {
            out += "\\\\";
        } else if (c >= 0x20 && c < 0x7f) {
            out += static_cast<char>(c);
        } else {  // control bytes and non-ASCII: escaped, so a message is always valid UTF-8
            char b[8];
            std::snprintf(b, sizeof(b), "\\x%02x", c);
            out += b;
        }
    }
    if (s.size() > max_len) out += "...";
    return out;
}

std::string format_bytes(uint64_t n) {
    const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
    double v = static_cast<double>(n);
    int u = 0;
    while (v >= 1024.0 && u < 4) {
        v /= 1024.0;
        ++u;
    }
    if (u == 0) return strprintf("%llu B", static_cast<unsigned long long>(n));
    return strprintf("%.2f %s", v, units[u]);
}

}  // namespace aircache
