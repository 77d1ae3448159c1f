// bind_ops.cpp — single backend ops on numpy arrays, on the CPU or a CUDA device, for tests/gpu:
// each CUDA kernel family is checked against the CPU backend (the oracle) op by op. Argument
// conversion only: the ops are cpu::* (cpu/ops.h), cuda::test::* (cuda_api.h), KVCache and
// StatsCollector.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/map.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include <memory>
#include <optional>

#include "common.h"
#include "compress/stats.h"
#include "cpu/ops.h"
#include "cuda_api.h"
#include "device.h"
#include "kv_cache.h"
#include "quants.h"
#include "threadpool.h"

namespace nb = nanobind;
using namespace aircache;

namespace {

using F32 = nb::ndarray<const float, nb::c_contig, nb::device::cpu>;
using I32 = nb::ndarray<const int32_t, nb::ndim<1>, nb::c_contig, nb::device::cpu>;
using I64 = nb::ndarray<const int64_t, nb::ndim<1>, nb::c_contig, nb::device::cpu>;
using U8 = nb::ndarray<const uint8_t, nb::ndim<1>, nb::c_contig, nb::device::cpu>;
using Out = nb::ndarray<nb::numpy, float>;

Out to_numpy(std::vector<float>&& v, std::vector<size_t> shape) {
    auto* heap = new std::vector<float>(std::move(v));
    nb::capsule owner(heap, [](void* p) noexcept { delete static_cast<std::vector<float>*>(p); });
    return Out(heap->data(), shape.size(), shape.data(), owner);
}

std::vector<float> copy(const F32& a) { return std::vector<float>(a.data(), a.data() + a.size()); }

std::vector<size_t> shape_of(const F32& a) {
    std::vector<size_t> s;
    for (size_t i = 0; i < a.ndim(); ++i) s.push_back(a.shape(i));
    return s;
}

void need_dims(const F32& a, size_t nd, const char* name) {
    if (a.ndim() != nd) throw InputError(strprintf("%s must have %zu dimensions (got %zu)", name, nd, a.ndim()));
}

// "cpu" -> -1, "cuda[:N]" -> N (checked to exist)
int device_of(const std::string& name) {
    const DeviceSpec d = resolve_device(name == "auto" ? std::string("cpu") : name);
    return d.cuda() ? d.index : -1;
}

ThreadPool& pool() {
    static ThreadPool p(2);
    return p;
}

cpu::Activation activation_of(const std::string& k) {
    if (k == "gelu") return cpu::Activation::GELU;
    if (k == "quick_gelu") return cpu::Activation::QuickGELU;
    if (k == "silu") return cpu::Activation::SiLU;
    throw InputError("unknown activation '" + k + "' (gelu, quick_gelu, silu)");
}

// One sequence's keys and values, [L][Hkv][D] each.
struct SeqKV {
    const float* k;
    const float* v;
    int64_t L, Hkv, D;
};

SeqKV seq_kv(const F32& k, const F32& v) {
    need_dims(k, 3, "keys");
    if (v.size() != k.size()) throw InputError("keys and values must have the same shape [L][n_head_kv][head_dim]");
    return SeqKV{k.data(), v.data(), static_cast<int64_t>(k.shape(0)), static_cast<int64_t>(k.shape(1)),
                 static_cast<int64_t>(k.shape(2))};
}

// A one-layer cache per sequence on `dev` (-1: host) holding its keys/values.
std::vector<std::unique_ptr<KVCache>> make_caches(const std::vector<SeqKV>& seqs, const std::string& kv_type, int dev) {
    if (seqs.empty()) throw InputError("no key/value arrays");
    int64_t cap = 1;
    for (const SeqKV& s : seqs) {
        if (s.Hkv != seqs[0].Hkv || s.D != seqs[0].D)
            throw InputError("every sequence's keys and values must be [L][n_head_kv][head_dim] of one shape");
        cap = std::max(cap, s.L);
    }
    KVCacheConfig c;
    c.n_layer = 1;
    c.n_head_kv = static_cast<int>(seqs[0].Hkv);
    c.head_dim = static_cast<int>(seqs[0].D);
    c.capacity = cap;
    c.type = kv_type_from_name(kv_type);
    c.n_device_layers = dev >= 0 ? 1 : 0;
    c.device = std::max(dev, 0);
    std::vector<std::unique_ptr<KVCache>> out;
    for (const SeqKV& s : seqs) {
        out.push_back(std::make_unique<KVCache>(c));
        out.back()->append(0, s.k, s.v, s.L);
    }
    return out;
}

nb::list read_cache(const KVCache& kv) {
    nb::list heads;
    const size_t n = static_cast<size_t>(kv.length(0)), D = static_cast<size_t>(kv.config().head_dim);
    for (int h = 0; h < kv.config().n_head_kv; ++h)
        heads.append(nb::make_tuple(to_numpy(kv.read(0, h, false), {n, D}), to_numpy(kv.read(0, h, true), {n, D})));
    return heads;
}

}  // namespace

void aircache_bind_ops(nb::module_& m) {
    m.def("_op_matmul", [](const std::string& device, const std::string& type, U8 w, int64_t n_rows, int64_t n_cols,
                           F32 x, std::optional<F32> bias) {
        need_dims(x, 2, "x");
        const TypeInfo* ti = type_info_by_name(type);
        if (!ti || !ti->supported) throw UnsupportedError("unknown or unsupported type '" + type + "'");
        const size_t rb = row_bytes(*ti, n_cols);
        if (w.size() != rb * static_cast<size_t>(n_rows) || static_cast<int64_t>(x.shape(1)) != n_cols)
            throw InputError("matmul: weight bytes or x columns do not match n_rows x n_cols");
        const int64_t T = static_cast<int64_t>(x.shape(0));
        const float* b = bias ? bias->data() : nullptr;
        std::vector<float> y(static_cast<size_t>(T * n_rows));
        const int dev = device_of(device);
        nb::gil_scoped_release nogil;
        if (dev >= 0) {
            cuda::test::matmul(ti->type, w.data(), n_rows, n_cols, x.data(), T, b, y.data(), dev);
        } else {
            Weight W;
            W.type = ti->type;
            W.info = ti;
            W.n_rows = n_rows;
            W.n_cols = n_cols;
            W.row_bytes = rb;
            W.data = w.data();
            cpu::matmul(W, x.data(), T, y.data(), pool(), b);
        }
        nb::gil_scoped_acquire gil;
        return to_numpy(std::move(y), {static_cast<size_t>(T), static_cast<size_t>(n_rows)});
    }, nb::arg("device"), nb::arg("type"), nb::arg("w"), nb::arg("n_rows"), nb::arg("n_cols"), nb::arg("x"),
       nb::arg("bias").none() = nb::none());

    m.def("_cuda_alloc", [](size_t bytes, int device) {
        void* p = cuda::device_malloc(bytes, device);
        cuda::device_free(p);
    }, "Allocates and frees `bytes` on a CUDA device (tests: out-of-memory errors).");

    m.def("_cuda_gemm_backend", [](int device) { return cuda::gemm_backend(device); },
          "How prefill GEMMs run on the device: cuBLAS (with its path) or the built-in kernels (and why).");

    m.def("_op_rmsnorm", [](const std::string& device, F32 x, F32 w, float eps) {
        need_dims(x, 2, "x");
        const int64_t T = static_cast<int64_t>(x.shape(0)), n = static_cast<int64_t>(x.shape(1));
        std::vector<float> y(x.size());
        const int dev = device_of(device);
        if (dev >= 0) cuda::test::rmsnorm(x.data(), w.data(), T, n, eps, y.data(), dev);
        else cpu::rmsnorm(x.data(), w.data(), T, n, eps, y.data(), pool());
        return to_numpy(std::move(y), shape_of(x));
    });

    m.def("_op_layernorm", [](const std::string& device, F32 x, F32 w, F32 b, float eps) {
        need_dims(x, 2, "x");
        const int64_t T = static_cast<int64_t>(x.shape(0)), n = static_cast<int64_t>(x.shape(1));
        std::vector<float> y(x.size());
        const int dev = device_of(device);
        if (dev >= 0) cuda::test::layernorm(x.data(), w.data(), b.data(), T, n, eps, y.data(), dev);
        else cpu::layernorm(x.data(), w.data(), b.data(), T, n, eps, y.data(), pool());
        return to_numpy(std::move(y), shape_of(x));
    });

    m.def("_op_rope", [](const std::string& device, F32 x, int64_t n_rot, I32 pos, F32 inv_freq, bool neox) {
        need_dims(x, 3, "x");
        const int64_t T = static_cast<int64_t>(x.shape(0)), H = static_cast<int64_t>(x.shape(1));
        const int64_t D = static_cast<int64_t>(x.shape(2));
        if (static_cast<int64_t>(pos.size()) != T || static_cast<int64_t>(inv_freq.size()) != n_rot / 2 || n_rot > D)
            throw InputError("rope: pos must have T entries, inv_freq n_rot/2, n_rot <= head_dim");
        std::vector<float> y = copy(x);
        const int dev = device_of(device);
        if (dev >= 0) cuda::test::rope(y.data(), T, H, D, n_rot, pos.data(), inv_freq.data(), neox, dev);
        else cpu::rope(y.data(), T, H, D, n_rot, pos.data(), inv_freq.data(),
                       neox ? cpu::RopeStyle::Neox : cpu::RopeStyle::Norm, pool());
        return to_numpy(std::move(y), shape_of(x));
    });

    m.def("_op_silu_mul", [](const std::string& device, F32 gate, F32 up) {
        if (gate.size() != up.size()) throw InputError("silu_mul: gate and up differ in size");
        std::vector<float> y = copy(gate);
        const int dev = device_of(device);
        if (dev >= 0) cuda::test::silu_mul(y.data(), up.data(), static_cast<int64_t>(y.size()), dev);
        else cpu::silu_mul(y.data(), up.data(), static_cast<int64_t>(y.size()), pool());
        return to_numpy(std::move(y), shape_of(gate));
    });

    m.def("_op_activation", [](const std::string& device, F32 x, const std::string& kind) {
        std::vector<float> y = copy(x);
        const cpu::Activation a = activation_of(kind);
        const int dev = device_of(device);
        if (dev >= 0) cuda::test::activation(y.data(), static_cast<int64_t>(y.size()), static_cast<int>(a), dev);
        else cpu::activation(y.data(), static_cast<int64_t>(y.size()), a, pool());
        return to_numpy(std::move(y), shape_of(x));
    });

    m.def("_op_softmax", [](const std::string& device, F32 x) {
        need_dims(x, 2, "x");
        std::vector<float> y = copy(x);
        const int64_t T = static_cast<int64_t>(x.shape(0)), n = static_cast<int64_t>(x.shape(1));
        const int dev = device_of(device);
        if (dev >= 0) cuda::test::softmax(y.data(), T, n, dev);
        else cpu::softmax(y.data(), T, n, pool());
        return to_numpy(std::move(y), shape_of(x));
    });

    m.def("_op_add", [](const std::string& device, F32 x, F32 y) {
        if (x.size() != y.size()) throw InputError("add: sizes differ");
        std::vector<float> out = copy(x);
        const int dev = device_of(device);
        if (dev >= 0) cuda::test::add(out.data(), y.data(), static_cast<int64_t>(out.size()), dev);
        else cpu::add(out.data(), y.data(), static_cast<int64_t>(out.size()));
        return to_numpy(std::move(out), shape_of(x));
    });

    m.def("_op_attention_dense", [](const std::string& device, F32 q, F32 k, F32 v) {
        need_dims(q, 3, "q");
        if (k.size() != q.size() || v.size() != q.size()) throw InputError("q, k, v must be [T][H][D] alike");
        const int64_t T = static_cast<int64_t>(q.shape(0)), H = static_cast<int64_t>(q.shape(1));
        const int64_t D = static_cast<int64_t>(q.shape(2));
        std::vector<float> out(q.size());
        const int dev = device_of(device);
        if (dev >= 0) cuda::test::attention_dense(q.data(), k.data(), v.data(), T, H, D, out.data(), dev);
        else cpu::attention_dense(q.data(), k.data(), v.data(), T, H, D, out.data(), pool());
        return to_numpy(std::move(out), shape_of(q));
    });

    m.def("_op_attention", [](const std::string& device, F32 q, std::vector<F32> keys, std::vector<F32> values, I32 seq,
                              I64 kv_len, const std::string& kv_type) {
        need_dims(q, 3, "q");
        const int64_t T = static_cast<int64_t>(q.shape(0)), H = static_cast<int64_t>(q.shape(1));
        if (static_cast<int64_t>(seq.size()) != T || static_cast<int64_t>(kv_len.size()) != T)
            throw InputError("attention: seq and kv_len need one entry per query row");
        const int dev = device_of(device);
        if (keys.size() != values.size()) throw InputError("attention: one value array per key array");
        std::vector<SeqKV> seqs;
        for (size_t i = 0; i < keys.size(); ++i) seqs.push_back(seq_kv(keys[i], values[i]));
        auto caches = make_caches(seqs, kv_type, dev);
        std::vector<KVCache*> ptrs;
        for (auto& c : caches) ptrs.push_back(c.get());
        for (int64_t t = 0; t < T; ++t) {
            if (seq.data()[t] < 0 || seq.data()[t] >= static_cast<int32_t>(ptrs.size()) || kv_len.data()[t] < 1 ||
                kv_len.data()[t] > ptrs[static_cast<size_t>(seq.data()[t])]->length(0))
                throw InputError("attention: seq out of range or kv_len outside [1, length]");
        }
        std::vector<float> out(q.size());
        if (dev >= 0)
            cuda::test::attention(q.data(), T, H, ptrs.data(), seq.data(), kv_len.data(), 0, out.data(), dev);
        else
            cpu::attention(q.data(), T, H, ptrs.data(), seq.data(), kv_len.data(), 0, out.data(), pool());
        return to_numpy(std::move(out), shape_of(q));
    });

    m.def("_op_kv_compact", [](const std::string& device, F32 keys, F32 values, std::vector<std::vector<int32_t>> kept,
                               const std::string& kv_type) {
        const int dev = device_of(device);
        auto caches = make_caches({seq_kv(keys, values)}, kv_type, dev);
        if (kept.size() == 1) caches[0]->compact(0, kept[0]);
        else caches[0]->compact_heads(0, kept);
        return read_cache(*caches[0]);
    }, "Compacts one cache layer; returns [(K, V) per KV head] as read back.");

    m.def("_op_kv_read", [](const std::string& device, F32 keys, F32 values, const std::string& kv_type) {
        const int dev = device_of(device);
        auto caches = make_caches({seq_kv(keys, values)}, kv_type, dev);
        return read_cache(*caches[0]);
    }, "Writes keys/values [L][Hkv][D] into a cache layer and reads them back per head.");

    m.def("_op_importance", [](const std::string& device, F32 q, F32 keys, std::vector<int32_t> visual,
                               std::vector<int64_t> chunks, nb::dict request, const std::string& kv_type) {
        // q [m][H][D] (every prompt row), keys [m][Hkv][D]; rows observed in the given chunk sizes
        need_dims(q, 3, "q");
        need_dims(keys, 3, "keys");
        const int64_t m_rows = static_cast<int64_t>(q.shape(0)), H = static_cast<int64_t>(q.shape(1));
        const int64_t D = static_cast<int64_t>(q.shape(2));
        if (static_cast<int64_t>(keys.shape(0)) != m_rows || static_cast<int64_t>(keys.shape(2)) != D)
            throw InputError("importance: keys must be [m][n_head_kv][head_dim] for the m rows of q");
        compress::StatsRequest req;
        for (auto item : request) {
            const std::string k = nb::cast<std::string>(item.first);
            if (k == "colsum_from") req.colsum_from = nb::cast<std::vector<int64_t>>(item.second);
            else if (k == "density") req.density = nb::cast<bool>(item.second);
            else if (k == "density_from") req.density_from = nb::cast<int64_t>(item.second);
            else if (k == "density_ln_p") req.density_ln_p = nb::cast<double>(item.second);
            else if (k == "elite") req.elite = nb::cast<bool>(item.second);
            else if (k == "elite_from") req.elite_from = nb::cast<int64_t>(item.second);
            else if (k == "elite_ln_alpha") req.elite_ln_alpha = nb::cast<double>(item.second);
            else throw InputError("importance: unknown request field '" + k + "'");
        }
        compress::PromptLayout layout;
        layout.m = m_rows;
        layout.visual = visual;
        layout.is_visual.assign(static_cast<size_t>(m_rows), 0);
        for (int32_t v : visual) {
            if (v < 0 || v >= m_rows) throw InputError("importance: visual position out of range");
            layout.is_visual[static_cast<size_t>(v)] = 1;
        }
        compress::ModelShape shape;
        shape.n_layer = 1;
        shape.n_head = static_cast<int>(H);
        shape.n_head_kv = static_cast<int>(keys.shape(1));
        const int dev = device_of(device);
        std::vector<float> zeros(keys.size(), 0.0f);
        auto caches = make_caches({SeqKV{keys.data(), zeros.data(), m_rows, static_cast<int64_t>(keys.shape(1)), D}},
                                  kv_type, dev);
        compress::StatsCollector stats(req, layout, shape, D);
        int64_t p0 = 0;
        for (int64_t c : chunks) {
            if (c <= 0 || p0 + c > m_rows) throw InputError("importance: chunk sizes must be positive and sum to m");
            std::vector<int32_t> pos(static_cast<size_t>(c));
            for (int64_t i = 0; i < c; ++i) pos[static_cast<size_t>(i)] = static_cast<int32_t>(p0 + i);
            const float* qc = q.data() + p0 * H * D;
            if (dev >= 0) {
                const size_t bytes = sizeof(float) * static_cast<size_t>(c * H * D);
                void* dq = cuda::device_malloc(bytes, dev);
                try {
                    cuda::copy_to_device(dq, qc, bytes, dev);
                    stats.observe_device(0, static_cast<const float*>(dq), pos.data(), c, *caches[0], nullptr);
                } catch (...) {
                    cuda::device_free(dq);
                    throw;
                }
                cuda::device_free(dq);
            } else {
                stats.observe(0, qc, pos.data(), c, *caches[0], pool());
            }
            p0 += c;
        }
        if (p0 != m_rows) throw InputError("importance: chunk sizes must sum to m");
        const compress::LayerStats& s = stats.stats()[0];
        nb::dict out;
        nb::list cols;
        for (const auto& c : s.colsum)
            cols.append(to_numpy(std::vector<float>(c), {static_cast<size_t>(H), static_cast<size_t>(m_rows)}));
        out["colsum"] = cols;
        out["density_count"] = s.density_count;
        out["density_total"] = s.density_total;
        out["elite_importance"] = to_numpy(std::vector<float>(s.elite_importance),
                                           {s.elite_importance.empty() ? 0 : static_cast<size_t>(H),
                                            s.elite_importance.empty() ? 0 : visual.size()});
        out["elite_size"] = s.elite_size;
        return out;
    });
}
