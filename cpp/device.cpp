#include "device.h"

#include <cstdlib>

#include "common.h"
#include "runtime_info.h"

namespace aircache {

std::string DeviceSpec::name() const {
    if (kind == TEST) {
        std::string s = "test";
        for (size_t i = 0; i < decline.size(); ++i) s += (i ? "+" : ":decline=") + decline[i];
        return s;
    }
    return cuda() ? strprintf("cuda:%d", index) : std::string("cpu");
}

DeviceSpec parse_device(const std::string& name) {
    DeviceSpec d;
    if (name == "cpu" || name == "auto") return d;
    if (name == "cuda") {
        d.kind = DeviceSpec::CUDA;
        return d;
    }
    if (name == "test" || name.rfind("test:decline=", 0) == 0) {
        d.kind = DeviceSpec::TEST;
        std::string rest = name.size() > 13 ? name.substr(13) : "";
        for (size_t a = 0; a < rest.size();) {
            size_t b = rest.find('+', a);
            if (b == std::string::npos) b = rest.size();
            if (b > a) d.decline.push_back(rest.substr(a, b - a));
            a = b + 1;
        }
        return d;
    }
    if (name.rfind("cuda:", 0) == 0 && name.size() > 5 && name.size() <= 8) {
        int idx = 0;
        for (size_t i = 5; i < name.size(); ++i) {
            if (name[i] < '0' || name[i] > '9') idx = -1;
            if (idx < 0) break;
            idx = idx * 10 + (name[i] - '0');
        }
        if (idx >= 0) {
            d.kind = DeviceSpec::CUDA;
            d.index = idx;
            return d;
        }
    }
    throw InputError("unknown device '" + printable(name) + "' (valid: auto, cpu, cuda, cuda:N)");
}

DeviceSpec resolve_device(const std::string& name) {
    std::string n = name.empty() ? std::string("auto") : name;
    if (n == "auto") {
        const char* env = std::getenv("AIRCACHE_DEVICE");
        if (env && *env && std::string(env) != "auto") {
            n = env;
        } else {
            DeviceSpec d;
            if (cuda_available()) d.kind = DeviceSpec::CUDA;
            return d;
        }
    }
    DeviceSpec d = parse_device(n);
    if (!d.cuda()) return d;
    if (!build_info().cuda)
        throw UnsupportedError("device '" + n + "': this build of aircache.cpp has no CUDA support (it was built "
                               "without nvcc or with AIRCACHE_CUDA=OFF); use device='cpu' or rebuild with CUDA");
    const int count = cuda_device_count();
    if (count == 0)
        throw UnsupportedError("device '" + n + "': CUDA is built in but no CUDA device is usable on this machine "
                               "(no GPU, or no NVIDIA driver); use device='cpu'");
    if (d.index >= count)
        throw UnsupportedError(strprintf("device '%s': there are only %d CUDA device(s) (cuda:0..cuda:%d)", n.c_str(),
                                         count, count - 1));
    return d;
}

int offload_layers(const DeviceSpec& device, int n_gpu_layers, int n_layer) {
    if (!device.is_device()) return 0;
    if (n_gpu_layers < 0 || n_gpu_layers > n_layer) return n_layer;
    return n_gpu_layers;
}

}  // namespace aircache
