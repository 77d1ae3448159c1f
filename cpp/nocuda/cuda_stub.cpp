// cuda_stub.cpp — the CUDA entry points in a build without CUDA (compiled only then): no devices,
// and every use is an UnsupportedError saying so. Host code calls these unconditionally.
#include "common.h"
#include "compress/stats.h"
#include "cuda_api.h"
#include "gpu_model.h"

namespace aircache {

namespace {
[[noreturn]] void no_cuda(const char* what) {
    throw UnsupportedError(std::string(what) + ": this build of aircache.cpp has no CUDA support (built without nvcc "
                                               "or with AIRCACHE_CUDA=OFF)");
}
}  // namespace

namespace cuda {

int device_count() noexcept { return 0; }
bool built_with_cublas() noexcept { return false; }
std::string device_description(int) { no_cuda("CUDA device"); }
void memory_info(int, size_t&, size_t&) { no_cuda("CUDA memory"); }
std::string gemm_backend(int) { no_cuda("CUDA GEMM"); }
void* device_malloc(size_t, int) { no_cuda("CUDA memory"); }
void device_free(void*) noexcept {}
void copy_to_device(void*, const void*, size_t, int) { no_cuda("CUDA memory"); }
void copy_to_host(void*, const void*, size_t, int) { no_cuda("CUDA memory"); }
void copy_on_device(void*, const void*, size_t, int) { no_cuda("CUDA memory"); }
void memset_device(void*, int, size_t, int) { no_cuda("CUDA memory"); }
void kv_write(const KVLayerView&, int64_t, const float*, const float*, int64_t, int) { no_cuda("CUDA KV cache"); }
void kv_read(const KVLayerView&, bool, int, int64_t, float*, int) { no_cuda("CUDA KV cache"); }
void kv_gather(const KVLayerView&, const std::vector<int32_t>&, int64_t, int) { no_cuda("CUDA KV cache"); }
void kv_copy(const KVLayerView&, const KVLayerView&, int64_t, int) { no_cuda("CUDA KV cache"); }
void dequantize_on_device(GGMLType, const void*, size_t, float*, int64_t, int) { no_cuda("CUDA dequantization"); }

namespace test {
void matmul(GGMLType, const uint8_t*, int64_t, int64_t, const float*, int64_t, const float*, float*, int) {
    no_cuda("CUDA matmul");
}
void rmsnorm(const float*, const float*, int64_t, int64_t, float, float*, int) { no_cuda("CUDA rmsnorm"); }
void layernorm(const float*, const float*, const float*, int64_t, int64_t, float, float*, int) {
    no_cuda("CUDA layernorm");
}
void rope(float*, int64_t, int64_t, int64_t, int64_t, const int32_t*, const float*, bool, int) { no_cuda("CUDA rope"); }
void silu_mul(float*, const float*, int64_t, int) { no_cuda("CUDA silu_mul"); }
void activation(float*, int64_t, int, int) { no_cuda("CUDA activation"); }
void softmax(float*, int64_t, int64_t, int) { no_cuda("CUDA softmax"); }
void add(float*, const float*, int64_t, int) { no_cuda("CUDA add"); }
void attention_dense(const float*, const float*, const float*, int64_t, int64_t, int64_t, float*, int) {
    no_cuda("CUDA attention");
}
void attention(const float*, int64_t, int64_t, KVCache* const*, const int32_t*, const int64_t*, int, float*, int) {
    no_cuda("CUDA attention");
}
}  // namespace test

}  // namespace cuda

namespace gpu {
std::unique_ptr<Decoder> make_decoder(const DecoderWeights&, int, int) { no_cuda("the CUDA decoder"); }
std::unique_ptr<VisionEncoder> make_vision_encoder(const VisionWeights&, int) { no_cuda("the CUDA vision tower"); }
}  // namespace gpu

namespace compress {
void StatsCollector::observe_device(int, const float*, const int32_t*, int64_t, const KVCache&, void*) {
    no_cuda("the CUDA importance pass");
}
}  // namespace compress

}  // namespace aircache
