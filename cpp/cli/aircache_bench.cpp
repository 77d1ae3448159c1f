// aircache-bench — llama-bench-style speed tables (encode, prefill, importance pass, compaction,
// decode, KV memory). This build has no model runtime yet, so it prints its help and the build.
#include <cstdio>
#include <string>

#include "runtime_info.h"

namespace {

const char* kUsage =
    "usage: aircache-bench [options]\n"
    "\n"
    "Speed tables for aircache.cpp: image encode, prefill, importance pass, compaction,\n"
    "decode tokens/s and KV memory, per KV policy, budget and batch size.\n"
    "\n"
    "options:\n"
    "  -h, --help     show this help and exit\n"
    "  --version      print version and build information and exit\n"
    "\n"
    "Benchmarks need the model runtime, which this build does not contain yet;\n"
    "any other argument is an error.\n";

}  // namespace

int main(int argc, char** argv) {
    if (argc >= 2) {
        const std::string a = argv[1];
        if (a == "-h" || a == "--help") {
            std::fputs(kUsage, stdout);
            return 0;
        }
        if (a == "--version") {
            std::fputs(aircache::build_info_text().c_str(), stdout);
            return 0;
        }
        std::fprintf(stderr, "aircache-bench: error: '%s': benchmarks are not available in this build (see --help)\n",
                     a.c_str());
        return 2;
    }
    std::fputs(kUsage, stdout);
    return 0;
}
