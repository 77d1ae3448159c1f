// bind_ops.cpp — single backend ops on numpy arrays, on any backend ("cpu", "cuda:N", "test",
// "test:decline=op+op"), for the op tests: tests/test_backend_ops.py checks the CPU against numpy
// definitions and the test backend against the CPU; tests/gpu checks every CUDA op against the CPU
// (the oracle). Argument conversion only: inputs are copied to the backend, the op runs through the
// dispatcher (backend/ops.h, so a declined op takes the CPU fallback), outputs are copied back.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/map.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include <cmath>
#include <map>
#include <memory>
#include <mutex>
#include <optional>

#include "backend/ops.h"
#include "common.h"
#include "compress/probes/colsum.h"
#include "compress/probes/density.h"
#include "compress/probes/elite.h"
#include "compress/stats.h"
#include "cuda_api.h"
#include "device.h"
#include "kv_cache.h"
#include "quants.h"
#include "threadpool.h"

namespace nb = nanobind;
using namespace aircache;

namespace {

using F32 = nb::ndarray<const float, nb::c_contig, nb::device::cpu>;
using I32 = nb::ndarray<const int32_t, nb::c_contig, nb::device::cpu>;
using I64 = nb::ndarray<const int64_t, nb::ndim<1>, nb::c_contig, nb::device::cpu>;
using U8 = nb::ndarray<const uint8_t, nb::ndim<1>, nb::c_contig, nb::device::cpu>;
using Out = nb::ndarray<nb::numpy, float>;

Out to_numpy(std::vector<float>&& v, std::vector<size_t> shape) {
    auto* heap = new std::vector<float>(std::move(v));
    nb::capsule owner(heap, [](void* p) noexcept { delete static_cast<std::vector<float>*>(p); });
    return Out(heap->data(), shape.size(), shape.data(), owner);
}

std::vector<size_t> shape_of(const F32& a) {
    std::vector<size_t> s;
    for (size_t i = 0; i < a.ndim(); ++i) s.push_back(a.shape(i));
    return s;
}

void need_dims(const F32& a, size_t nd, const char* name) {
    if (a.ndim() != nd) throw InputError(strprintf("%s must have %zu dimensions (got %zu)", name, nd, a.ndim()));
}

// The backends of the harness, one per device name, made on first use.
struct Harness {
    ThreadPool pool{2};
    std::unique_ptr<Backend> cpu = make_cpu_backend(pool);
    std::map<std::string, std::unique_ptr<Backend>> devices;
    std::mutex mu;

    Backend& get(const std::string& name) {
        const DeviceSpec d = resolve_device(name == "auto" ? std::string("cpu") : name);
        if (!d.is_device()) return *cpu;
        std::lock_guard<std::mutex> lock(mu);
        const std::string key = d.name();
        auto it = devices.find(key);
        if (it != devices.end()) return *it->second;
        std::unique_ptr<Backend> be;
        if (d.cuda()) {
            be = make_cuda_backend(d.index);
        } else {
            std::vector<Op> decline;
            for (const std::string& n : d.decline) decline.push_back(op_from_name(n));
            be = make_test_backend(pool, decline);
        }
        return *devices.emplace(key, std::move(be)).first->second;
    }
};

Harness& harness() {
    static Harness h;
    return h;
}

// One op's tensors on a backend (kept alive until the call ends).
struct Args {
    explicit Args(const std::string& device) : be(harness().get(device)), cpu(*harness().cpu) {}
    Backend& be;
    Backend& cpu;
    std::vector<Buffer> bufs;
    Ops ops() { return Ops(be, cpu); }

    Tensor up(const void* data, GGMLType type, int64_t rows, int64_t cols) {
        const size_t bytes = tensor_row_bytes(type, cols) * static_cast<size_t>(rows);
        bufs.emplace_back(be, bytes);
        if (bytes) be.upload(bufs.back().data(), data, bytes);
        return bufs.back().tensor(type, rows, cols);
    }
    Tensor f32(const F32& a, int64_t rows, int64_t cols) {
        if (static_cast<int64_t>(a.size()) != rows * cols) throw InputError("an array has the wrong number of elements");
        return up(a.data(), GGMLType::F32, rows, cols);
    }
    Tensor f32_2d(const F32& a) {
        if (a.ndim() == 1) return f32(a, 1, static_cast<int64_t>(a.shape(0)));
        const int64_t cols = static_cast<int64_t>(a.shape(a.ndim() - 1));
        return f32(a, static_cast<int64_t>(a.size()) / cols, cols);
    }
    Tensor i32(const std::vector<int32_t>& v, int64_t rows, int64_t cols) { return up(v.data(), GGMLType::I32, rows, cols); }
    Tensor out(int64_t rows, int64_t cols) {
        bufs.emplace_back(be, sizeof(float) * static_cast<size_t>(std::max<int64_t>(rows * cols, 1)));
        return bufs.back().tensor(GGMLType::F32, rows, cols);
    }
    std::vector<float> down(const Tensor& t) {
        std::vector<float> v(static_cast<size_t>(t.numel()));
        if (!v.empty()) be.download(v.data(), t.data, t.bytes());
        return v;
    }
};

Param param_f32(const F32& a) {
    return Param::f32("x", std::vector<float>(a.data(), a.data() + a.size()));
}

// One KV layer per sequence on the device, holding its keys/values [L][Hkv][D].
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

std::vector<std::unique_ptr<KVCache>> make_caches(const std::vector<SeqKV>& seqs, const std::string& kv_type,
                                                  Backend& be) {
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
    const size_t comma = kv_type.find(',');  // "K,V": a type each
    c.type_k = kv_type_from_name(kv_type.substr(0, comma));
    c.type_v = comma == std::string::npos ? c.type_k : kv_type_from_name(kv_type.substr(comma + 1));
    c.backends = {&be};
    c.host = harness().cpu.get();
    std::vector<std::unique_ptr<KVCache>> out;
    for (const SeqKV& s : seqs) {
        c.initial = s.L;  // each sequence's layer allocated to its own length: a batch's rows differ in stride
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
        Args a(device);
        const Param W = Param::view("w", w.data(), ti->type, n_rows, n_cols);
        Param B = bias ? param_f32(*bias) : Param();
        Param Wp = W;
        Wp.place(a.be);
        B.place(a.be);
        Tensor y = a.out(T, n_rows);
        {
            nb::gil_scoped_release nogil;
            a.ops().matmul(Wp, a.f32(x, T, n_cols), y, bias ? &B : nullptr);
        }
        return to_numpy(a.down(y), {static_cast<size_t>(T), static_cast<size_t>(n_rows)});
    }, nb::arg("device"), nb::arg("type"), nb::arg("w"), nb::arg("n_rows"), nb::arg("n_cols"), nb::arg("x"),
       nb::arg("bias").none() = nb::none());

    m.def("_op_matmuls", [](const std::string& device, nb::list projs, int64_t n_cols, F32 x) {
        // projs: (type, weight bytes, n_rows, bias or None) each, all n_cols wide, over the same x
        need_dims(x, 2, "x");
        if (static_cast<int64_t>(x.shape(1)) != n_cols) throw InputError("matmuls: x columns do not match n_cols");
        const size_t count = nb::len(projs);
        if (count == 0 || count > 4) throw InputError("matmuls: 1 to 4 projections");
        const int64_t T = static_cast<int64_t>(x.shape(0));
        Args a(device);
        std::vector<Param> W(count), B(count);
        std::vector<Tensor> Y;
        Y.reserve(count);
        for (size_t i = 0; i < count; ++i) {
            nb::tuple p = nb::cast<nb::tuple>(projs[i]);
            if (nb::len(p) != 4) throw InputError("matmuls: each projection is (type, w, n_rows, bias)");
            const std::string type = nb::cast<std::string>(p[0]);
            const U8 w = nb::cast<U8>(p[1]);
            const int64_t n_rows = nb::cast<int64_t>(p[2]);
            const TypeInfo* ti = type_info_by_name(type);
            if (!ti || !ti->supported) throw UnsupportedError("unknown or unsupported type '" + type + "'");
            if (w.size() != row_bytes(*ti, n_cols) * static_cast<size_t>(n_rows))
                throw InputError("matmuls: weight bytes do not match n_rows x n_cols");
            W[i] = Param::view("w", w.data(), ti->type, n_rows, n_cols);
            W[i].place(a.be);
            if (!p[3].is_none()) {
                B[i] = param_f32(nb::cast<F32>(p[3]));
                B[i].place(a.be);
            }
            Y.push_back(a.out(T, n_rows));
        }
        const Tensor tx = a.f32(x, T, n_cols);
        {
            nb::gil_scoped_release nogil;
            Ops ops = a.ops();
            switch (count) {  // the initializer-list call the models make
                case 1: ops.matmuls(tx, {{&W[0], &Y[0], &B[0]}}); break;
                case 2: ops.matmuls(tx, {{&W[0], &Y[0], &B[0]}, {&W[1], &Y[1], &B[1]}}); break;
                case 3: ops.matmuls(tx, {{&W[0], &Y[0], &B[0]}, {&W[1], &Y[1], &B[1]}, {&W[2], &Y[2], &B[2]}}); break;
                default: ops.matmuls(tx, {{&W[0], &Y[0], &B[0]}, {&W[1], &Y[1], &B[1]}, {&W[2], &Y[2], &B[2]}, {&W[3], &Y[3], &B[3]}}); break;
            }
        }
        nb::list out;
        for (size_t i = 0; i < count; ++i) out.append(to_numpy(a.down(Y[i]), {static_cast<size_t>(T), static_cast<size_t>(Y[i].cols)}));
        return out;
    }, nb::arg("device"), nb::arg("projs"), nb::arg("n_cols"), nb::arg("x"),
       "Ops::matmuls over (type, w, n_rows, bias) projections of one x (the Q/K/V and gate/up call).");

    m.def("_cuda_alloc", [](size_t bytes, int device) {
        void* p = cuda::device_malloc(bytes, device);
        cuda::device_free(p);
    }, "Allocates and frees `bytes` on a CUDA device (tests: out-of-memory errors).");

    m.def("_cuda_gemm_backend", [](int device) { return cuda::gemm_backend(device); },
          "How prefill GEMMs run on the device: cuBLAS (with its path) or the built-in kernels (and why).");

    m.def("_op_rmsnorm", [](const std::string& device, F32 x, std::optional<F32> w, float eps) {
        need_dims(x, 2, "x");
        Args a(device);
        Param W = w ? param_f32(*w) : Param();
        W.place(a.be);
        const Tensor tx = a.f32_2d(x);
        Tensor y = a.out(tx.rows, tx.cols);
        a.ops().rms_norm(tx, w ? &W : nullptr, eps, y);
        return to_numpy(a.down(y), shape_of(x));
    }, nb::arg("device"), nb::arg("x"), nb::arg("w").none(), nb::arg("eps"));

    m.def("_op_layernorm", [](const std::string& device, F32 x, std::optional<F32> w, std::optional<F32> b, float eps) {
        need_dims(x, 2, "x");
        Args a(device);
        Param W = w ? param_f32(*w) : Param(), B = b ? param_f32(*b) : Param();
        W.place(a.be);
        B.place(a.be);
        const Tensor tx = a.f32_2d(x);
        Tensor y = a.out(tx.rows, tx.cols);
        a.ops().layer_norm(tx, w ? &W : nullptr, b ? &B : nullptr, eps, y);
        return to_numpy(a.down(y), shape_of(x));
    }, nb::arg("device"), nb::arg("x"), nb::arg("w").none(), nb::arg("b").none(), nb::arg("eps"));

    m.def("_op_rope", [](const std::string& device, F32 x, int64_t n_rot, I32 pos, F32 inv_freq, bool neox,
                         std::optional<I32> pair_axis) {
        // x [T][H][D]; pos [T] or [T][n_axes]; pair_axis [n_rot/2] (multi-axis RoPE)
        need_dims(x, 3, "x");
        const int64_t T = static_cast<int64_t>(x.shape(0)), H = static_cast<int64_t>(x.shape(1));
        const int64_t D = static_cast<int64_t>(x.shape(2));
        const int64_t A = pos.ndim() == 2 ? static_cast<int64_t>(pos.shape(1)) : 1;
        if (static_cast<int64_t>(pos.size()) != T * A || static_cast<int64_t>(inv_freq.size()) != n_rot / 2 ||
            n_rot > D || n_rot % 2)
            throw InputError("rope: pos must be [T] or [T][n_axes], inv_freq n_rot/2, n_rot even and <= head_dim");
        Args a(device);
        Param inv = param_f32(inv_freq), ax;
        inv.place(a.be);
        if (pair_axis) {
            if (static_cast<int64_t>(pair_axis->size()) != n_rot / 2) throw InputError("rope: pair_axis needs n_rot/2 entries");
            for (size_t i = 0; i < pair_axis->size(); ++i)
                if (pair_axis->data()[i] < 0 || pair_axis->data()[i] >= A) throw InputError("rope: pair_axis out of range");
            ax = Param::i32("axis", std::vector<int32_t>(pair_axis->data(), pair_axis->data() + pair_axis->size()));
            ax.place(a.be);
        }
        Tensor tx = a.f32(x, T, H * D);
        RopeParams p;
        p.style = neox ? RopeStyle::Neox : RopeStyle::Norm;
        p.n_rot = n_rot;
        p.n_axes = static_cast<int>(A);
        a.ops().rope(tx, H, D, a.up(pos.data(), GGMLType::I32, T, A), inv, pair_axis ? &ax : nullptr, p);
        return to_numpy(a.down(tx), shape_of(x));
    }, nb::arg("device"), nb::arg("x"), nb::arg("n_rot"), nb::arg("pos"), nb::arg("inv_freq"), nb::arg("neox"),
       nb::arg("pair_axis").none() = nb::none());

    m.def("_op_glu", [](const std::string& device, F32 gate, F32 up, const std::string& kind) {
        if (gate.size() != up.size()) throw InputError("glu: gate and up differ in size");
        Args a(device);
        Tensor g = a.f32_2d(gate);
        a.ops().glu(g, a.f32_2d(up), activation_from_name(kind));
        return to_numpy(a.down(g), shape_of(gate));
    });

    m.def("_op_silu_mul", [](const std::string& device, F32 gate, F32 up) {
        if (gate.size() != up.size()) throw InputError("silu_mul: gate and up differ in size");
        Args a(device);
        Tensor g = a.f32_2d(gate);
        a.ops().glu(g, a.f32_2d(up), Activation::SiLU);
        return to_numpy(a.down(g), shape_of(gate));
    });

    m.def("_op_activation", [](const std::string& device, F32 x, const std::string& kind) {
        Args a(device);
        Tensor t = a.f32_2d(x);
        a.ops().activation(t, activation_from_name(kind));
        return to_numpy(a.down(t), shape_of(x));
    });

    m.def("_op_softmax", [](const std::string& device, F32 x) {
        need_dims(x, 2, "x");
        Args a(device);
        Tensor t = a.f32_2d(x);
        a.ops().softmax(t);
        return to_numpy(a.down(t), shape_of(x));
    });

    m.def("_op_add", [](const std::string& device, F32 x, F32 y) {
        // y the same size as x, or one row of x's width (added to every row)
        Args a(device);
        Tensor t = a.f32_2d(x);
        if (y.size() == x.size()) a.ops().add(t, a.f32(y, t.rows, t.cols));
        else if (static_cast<int64_t>(y.size()) == t.cols) a.ops().add(t, a.f32(y, 1, t.cols));
        else throw InputError("add: y must be x's shape or one row");
        return to_numpy(a.down(t), shape_of(x));
    });

    m.def("_op_mul", [](const std::string& device, F32 x, F32 y) {
        Args a(device);
        Tensor t = a.f32_2d(x);
        if (y.size() == x.size()) a.ops().mul(t, a.f32(y, t.rows, t.cols));
        else if (static_cast<int64_t>(y.size()) == t.cols) a.ops().mul(t, a.f32(y, 1, t.cols));
        else throw InputError("mul: y must be x's shape or one row");
        return to_numpy(a.down(t), shape_of(x));
    });

    m.def("_op_scale", [](const std::string& device, F32 x, float s) {
        Args a(device);
        Tensor t = a.f32_2d(x);
        a.ops().scale(t, s);
        return to_numpy(a.down(t), shape_of(x));
    });

    m.def("_op_get_rows", [](const std::string& device, F32 src, std::vector<int32_t> idx) {
        need_dims(src, 2, "src");
        Args a(device);
        const Tensor s = a.f32_2d(src);
        for (int32_t i : idx)
            if (i < 0 || i >= s.rows) throw InputError("get_rows: index out of range");
        Tensor d = a.out(static_cast<int64_t>(idx.size()), s.cols);
        a.ops().get_rows(s, a.i32(idx, static_cast<int64_t>(idx.size()), 1), d);
        return to_numpy(a.down(d), {idx.size(), static_cast<size_t>(s.cols)});
    });

    m.def("_op_set_rows", [](const std::string& device, F32 dst, std::vector<int32_t> idx, F32 src) {
        need_dims(dst, 2, "dst");
        need_dims(src, 2, "src");
        Args a(device);
        Tensor d = a.f32_2d(dst);
        const Tensor s = a.f32_2d(src);
        if (s.cols != d.cols || s.rows != static_cast<int64_t>(idx.size())) throw InputError("set_rows: shapes differ");
        for (int32_t i : idx)
            if (i < 0 || i >= d.rows) throw InputError("set_rows: index out of range");
        a.ops().set_rows(d, a.i32(idx, static_cast<int64_t>(idx.size()), 1), s);
        return to_numpy(a.down(d), shape_of(dst));
    });

    m.def("_op_concat", [](const std::string& device, std::vector<F32> parts) {
        if (parts.empty()) throw InputError("concat: no parts");
        Args a(device);
        std::vector<Tensor> ts;
        int64_t cols = 0;
        for (const F32& p : parts) {
            need_dims(p, 2, "part");
            ts.push_back(a.f32_2d(p));
            if (ts.back().rows != ts[0].rows) throw InputError("concat: parts differ in rows");
            cols += ts.back().cols;
        }
        Tensor o = a.out(ts[0].rows, cols);
        a.ops().concat(ts, o);
        return to_numpy(a.down(o), {static_cast<size_t>(ts[0].rows), static_cast<size_t>(cols)});
    });

    m.def("_op_patch_embed", [](const std::string& device, F32 pixels, F32 w, std::optional<F32> bias, int64_t patch) {
        // pixels [C][H][W], w [n_out][C][P][P] (a conv kernel), bias [n_out]
        need_dims(pixels, 3, "pixels");
        need_dims(w, 4, "w");
        const int64_t C = static_cast<int64_t>(pixels.shape(0)), Hh = static_cast<int64_t>(pixels.shape(1));
        const int64_t Ww = static_cast<int64_t>(pixels.shape(2)), NO = static_cast<int64_t>(w.shape(0));
        if (patch <= 0 || Hh % patch || Ww % patch || static_cast<int64_t>(w.shape(1)) != C ||
            static_cast<int64_t>(w.shape(2)) != patch || static_cast<int64_t>(w.shape(3)) != patch)
            throw InputError("patch_embed: the image must be whole patches and w [n_out][C][P][P]");
        Args a(device);
        Param W = Param::f32("w", std::vector<float>(w.data(), w.data() + w.size()), NO);
        Param B = bias ? param_f32(*bias) : Param();
        W.place(a.be);
        B.place(a.be);
        const int64_t NP = (Hh / patch) * (Ww / patch);
        Tensor o = a.out(NP, NO);
        a.ops().patch_embed(a.f32(pixels, C * Hh, Ww), C, Hh, Ww, patch, W, bias ? &B : nullptr, o);
        return to_numpy(a.down(o), {static_cast<size_t>(NP), static_cast<size_t>(NO)});
    }, nb::arg("device"), nb::arg("pixels"), nb::arg("w"), nb::arg("bias").none(), nb::arg("patch"));

    m.def("_op_avg_pool", [](const std::string& device, F32 x, int64_t k) {
        // x [H][W][C] -> [H/k][W/k][C]
        need_dims(x, 3, "x");
        const int64_t Hh = static_cast<int64_t>(x.shape(0)), Ww = static_cast<int64_t>(x.shape(1));
        const int64_t C = static_cast<int64_t>(x.shape(2));
        if (k <= 0 || Hh % k || Ww % k) throw InputError("avg_pool: the grid must be whole k x k windows");
        Args a(device);
        Tensor o = a.out((Hh / k) * (Ww / k), C);
        a.ops().avg_pool(a.f32(x, Hh * Ww, C), Hh, Ww, k, o);
        return to_numpy(a.down(o), {static_cast<size_t>(Hh / k), static_cast<size_t>(Ww / k), static_cast<size_t>(C)});
    });

    m.def("_op_attention_dense", [](const std::string& device, F32 q, F32 k, F32 v, std::optional<I32> ranges,
                                    std::optional<float> scale) {
        // q [T][H][D], k/v [S][Hkv][D]; ranges [T][2]: row t sees keys [lo, hi)
        need_dims(q, 3, "q");
        need_dims(k, 3, "k");
        if (k.size() != v.size() || k.shape(2) != q.shape(2)) throw InputError("k and v must be [S][Hkv][D] alike");
        const int64_t T = static_cast<int64_t>(q.shape(0)), H = static_cast<int64_t>(q.shape(1));
        const int64_t D = static_cast<int64_t>(q.shape(2)), S = static_cast<int64_t>(k.shape(0));
        const int64_t Hkv = static_cast<int64_t>(k.shape(1));
        if (H % Hkv) throw InputError("attention: n_head must be a multiple of n_head_kv");
        Args a(device);
        Tensor r;
        if (ranges) {
            if (static_cast<int64_t>(ranges->size()) != 2 * T) throw InputError("attention: ranges must be [T][2]");
            for (int64_t t = 0; t < T; ++t) {
                const int32_t lo = ranges->data()[2 * t], hi = ranges->data()[2 * t + 1];
                if (lo < 0 || hi > S || lo >= hi) throw InputError("attention: each range must be 0 <= lo < hi <= S");
            }
            r = a.up(ranges->data(), GGMLType::I32, T, 2);
        }
        Tensor o = a.out(T, H * D);
        a.ops().attention(a.f32(q, T, H * D), a.f32(k, S, Hkv * D), a.f32(v, S, Hkv * D), H, Hkv, D, ranges ? &r : nullptr,
                          scale ? *scale : 1.0f / std::sqrt(static_cast<float>(D)), o);
        return to_numpy(a.down(o), shape_of(q));
    }, nb::arg("device"), nb::arg("q"), nb::arg("k"), nb::arg("v"), nb::arg("ranges").none() = nb::none(),
       nb::arg("scale").none() = nb::none());

    m.def("_op_attention", [](const std::string& device, F32 q, std::vector<F32> keys, std::vector<F32> values, I32 seq,
                              I64 kv_len, const std::string& kv_type, std::optional<I64> kv_lo,
                              std::optional<std::vector<F32>> bias) {
        // row t reads sequence seq[t]'s cache, keys [kv_lo[t], kv_len[t]); bias: per sequence [Hkv][L]
        // logit biases of its keys (KVCache::set_bias)
        need_dims(q, 3, "q");
        const int64_t T = static_cast<int64_t>(q.shape(0)), H = static_cast<int64_t>(q.shape(1));
        if (static_cast<int64_t>(seq.size()) != T || static_cast<int64_t>(kv_len.size()) != T)
            throw InputError("attention: seq and kv_len need one entry per query row");
        if (keys.size() != values.size()) throw InputError("attention: one value array per key array");
        Args a(device);
        std::vector<SeqKV> seqs;
        for (size_t i = 0; i < keys.size(); ++i) seqs.push_back(seq_kv(keys[i], values[i]));
        auto caches = make_caches(seqs, kv_type, a.be);
        if (bias) {
            if (bias->size() != caches.size()) throw InputError("attention: one bias array per sequence");
            for (size_t i = 0; i < caches.size(); ++i) {
                const F32& b = (*bias)[i];
                const int64_t Hkv = caches[i]->config().n_head_kv, L = caches[i]->length(0);
                if (b.ndim() != 2 || static_cast<int64_t>(b.shape(0)) != Hkv || static_cast<int64_t>(b.shape(1)) != L)
                    throw InputError("attention: a sequence's bias must be [n_head_kv][length]");
                std::vector<int32_t> rows(static_cast<size_t>(L));
                for (int64_t j = 0; j < L; ++j) rows[static_cast<size_t>(j)] = static_cast<int32_t>(j);
                for (int64_t h = 0; h < Hkv; ++h)
                    caches[i]->set_bias(0, static_cast<int>(h), rows, std::vector<float>(b.data() + h * L, b.data() + (h + 1) * L));
            }
        }
        KVRows rows;
        rows.shape = caches[0]->shape(0);
        for (int64_t t = 0; t < T; ++t) {
            const int32_t s = seq.data()[t];
            const int64_t lo = kv_lo ? kv_lo->data()[t] : 0;
            if (s < 0 || s >= static_cast<int32_t>(caches.size()) || kv_len.data()[t] < 1 ||
                kv_len.data()[t] > caches[static_cast<size_t>(s)]->length(0) || lo < 0 || lo >= kv_len.data()[t])
                throw InputError("attention: seq out of range or the key range outside [0, length]");
            KVRow r;
            r.k = caches[static_cast<size_t>(s)]->k(0);
            r.v = caches[static_cast<size_t>(s)]->v(0);
            r.cap = static_cast<int32_t>(caches[static_cast<size_t>(s)]->allocated(0));
            r.bias = caches[static_cast<size_t>(s)]->bias(0);
            r.lo = static_cast<int32_t>(lo);
            r.hi = static_cast<int32_t>(kv_len.data()[t]);
            rows.host.push_back(r);
        }
        rows.table = a.up(rows.host.data(), GGMLType::I32, T, kKVRowInts);
        const int64_t D = rows.shape.head_dim;
        Tensor o = a.out(T, H * D);
        a.ops().attention_kv(a.f32(q, T, H * D), H, rows, 1.0f / std::sqrt(static_cast<float>(D)), o);
        return to_numpy(a.down(o), shape_of(q));
    }, nb::arg("device"), nb::arg("q"), nb::arg("keys"), nb::arg("values"), nb::arg("seq"), nb::arg("kv_len"),
       nb::arg("kv_type"), nb::arg("kv_lo").none() = nb::none(), nb::arg("bias").none() = nb::none());

    m.def("_op_kv_compact", [](const std::string& device, F32 keys, F32 values, std::vector<std::vector<int32_t>> kept,
                               const std::string& kv_type) {
        Args a(device);
        auto caches = make_caches({seq_kv(keys, values)}, kv_type, a.be);
        if (kept.size() == 1) caches[0]->compact(0, kept[0]);
        else caches[0]->compact_heads(0, kept);
        return read_cache(*caches[0]);
    }, "Compacts one cache layer; returns [(K, V) per KV head] as read back.");

    m.def("_op_kv_read", [](const std::string& device, F32 keys, F32 values, const std::string& kv_type) {
        Args a(device);
        auto caches = make_caches({seq_kv(keys, values)}, kv_type, a.be);
        return read_cache(*caches[0]);
    }, "Writes keys/values [L][Hkv][D] into a cache layer (KVStore) and reads them back per head.");

    m.def("_op_importance", [](const std::string& device, F32 q, F32 keys, std::vector<int32_t> visual,
                               std::vector<int64_t> chunks, nb::dict request, const std::string& kv_type) {
        // q [m][H][D] (every prompt row), keys [m][Hkv][D]; rows observed in the given chunk sizes
        need_dims(q, 3, "q");
        need_dims(keys, 3, "keys");
        const int64_t m_rows = static_cast<int64_t>(q.shape(0)), H = static_cast<int64_t>(q.shape(1));
        const int64_t D = static_cast<int64_t>(q.shape(2));
        if (static_cast<int64_t>(keys.shape(0)) != m_rows || static_cast<int64_t>(keys.shape(2)) != D)
            throw InputError("importance: keys must be [m][n_head_kv][head_dim] for the m rows of q");
        std::vector<int64_t> colsum_from;
        bool density = false, elite = false;
        int64_t density_from = 0, elite_from = 0;
        double density_ln_p = 0.0, elite_ln_alpha = 0.0;
        for (auto item : request) {
            const std::string k = nb::cast<std::string>(item.first);
            if (k == "colsum_from") colsum_from = nb::cast<std::vector<int64_t>>(item.second);
            else if (k == "density") density = nb::cast<bool>(item.second);
            else if (k == "density_from") density_from = nb::cast<int64_t>(item.second);
            else if (k == "density_ln_p") density_ln_p = nb::cast<double>(item.second);
            else if (k == "elite") elite = nb::cast<bool>(item.second);
            else if (k == "elite_from") elite_from = nb::cast<int64_t>(item.second);
            else if (k == "elite_ln_alpha") elite_ln_alpha = nb::cast<double>(item.second);
            else throw InputError("importance: unknown request field '" + k + "'");
        }
        compress::ProbeSet req;
        std::shared_ptr<compress::ColsumProbe> col;
        std::shared_ptr<compress::DensityProbe> den;
        std::shared_ptr<compress::EliteProbe> eli;
        if (!colsum_from.empty()) req.add(col = std::make_shared<compress::ColsumProbe>(colsum_from));
        if (density) req.add(den = std::make_shared<compress::DensityProbe>(density_from, density_ln_p));
        if (elite) req.add(eli = std::make_shared<compress::EliteProbe>(elite_from, elite_ln_alpha));
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
        Args a(device);
        std::vector<float> zeros(keys.size(), 0.0f);
        auto caches = make_caches({SeqKV{keys.data(), zeros.data(), m_rows, static_cast<int64_t>(keys.shape(1)), D}},
                                  kv_type, a.be);
        compress::StatsCollector stats(req, layout, shape, D);
        Compute c(a.cpu, a.be.is_host() ? nullptr : &a.be, 1, 1);
        int64_t p0 = 0;
        for (int64_t n : chunks) {
            if (n <= 0 || p0 + n > m_rows) throw InputError("importance: chunk sizes must be positive and sum to m");
            KVRows rows;
            rows.shape = caches[0]->shape(0);
            for (int64_t i = 0; i < n; ++i) {
                KVRow r;
                r.dst = static_cast<int32_t>(p0 + i);
                r.cap = static_cast<int32_t>(caches[0]->allocated(0));
                rows.host.push_back(r);
            }
            const Tensor qc = a.up(q.data() + p0 * H * D, GGMLType::F32, n, H * D);
            stats.observe(0, qc, rows, *caches[0], c);
            p0 += n;
        }
        if (p0 != m_rows) throw InputError("importance: chunk sizes must sum to m");
        nb::dict out;
        nb::list cols;
        if (col)
            for (int64_t r0 : col->starts())
                cols.append(to_numpy(std::vector<float>(col->colsum(0, r0)), {static_cast<size_t>(H), static_cast<size_t>(m_rows)}));
        out["colsum"] = cols;
        out["density_count"] = den ? den->count(0) : std::vector<double>();
        out["density_total"] = den ? den->total() : 0.0;
        const std::vector<float> imp = eli ? eli->importance(0) : std::vector<float>();
        out["elite_importance"] = to_numpy(std::vector<float>(imp), {imp.empty() ? 0 : static_cast<size_t>(H),
                                                                     imp.empty() ? 0 : visual.size()});
        out["elite_size"] = eli ? eli->elite_size(0) : std::vector<float>();
        return out;
    });
}
