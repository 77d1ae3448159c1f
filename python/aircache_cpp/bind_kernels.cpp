// bind_kernels.cpp — test hooks for the CPU kernel tables (cpu/kernels.h); private (underscored)
// functions of _core used by tests/test_kernels.py, not part of the package's API.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include <memory>
#include <vector>

#include "common.h"
#include "cpu/kernels.h"
#include "quants.h"

namespace nb = nanobind;
using namespace aircache;

namespace {

using Bytes = nb::ndarray<const uint8_t, nb::ndim<1>, nb::c_contig, nb::device::cpu>;
using Floats = nb::ndarray<const float, nb::ndim<1>, nb::c_contig, nb::device::cpu>;
using Halves = nb::ndarray<const uint16_t, nb::ndim<1>, nb::c_contig, nb::device::cpu>;
using Bytes2 = nb::ndarray<const uint8_t, nb::ndim<2>, nb::c_contig, nb::device::cpu>;
using Floats2 = nb::ndarray<const float, nb::ndim<2>, nb::c_contig, nb::device::cpu>;

template <typename T> nb::ndarray<nb::numpy, T> to_numpy(std::vector<T>&& v) {
    auto* heap = new std::vector<T>(std::move(v));
    nb::capsule owner(heap, [](void* p) noexcept { delete static_cast<std::vector<T>*>(p); });
    const size_t shape[1] = {heap->size()};
    return nb::ndarray<nb::numpy, T>(heap->data(), 1, shape, owner);
}

const TypeInfo& supported_type(const std::string& name) {
    const TypeInfo* ti = type_info_by_name(name);
    if (!ti) throw InputError("unknown ggml type name '" + name + "'");
    require_supported(ti->type, "kernel dot");
    return *ti;
}

float kernel_dot(const std::string& table, const std::string& type_name, Bytes w, Floats x) {
    const cpu::KernelTable& k = cpu::kernel_table(table);
    const TypeInfo& ti = supported_type(type_name);
    const int64_t n = static_cast<int64_t>(x.size());
    const cpu::ActKind kind = k.act_kind(ti.type);
    const int64_t align = kind == cpu::ActKind::Q8KA ? 256 : kind == cpu::ActKind::Q8A ? 32 : ti.block_size;
    if (n % align != 0 || n % ti.block_size != 0)
        throw InputError(strprintf("%lld activations: not a multiple of %lld (%s with the %s table)",
                                   static_cast<long long>(n), static_cast<long long>(std::max(align, ti.block_size)),
                                   ti.name, k.name));
    if (w.size() != row_bytes(ti, n))
        throw InputError(strprintf("%s row of %lld elements is %zu bytes, got %zu", ti.name, static_cast<long long>(n),
                                   row_bytes(ti, n), w.size()));
    const cpu::KernelTable::DotFn dot = k.dot[static_cast<uint32_t>(ti.type)];
    if (!dot) {  // no integer path: dequantize + dot_f32, as callers do
        std::vector<float> wd(static_cast<size_t>(n));
        dequantize_row(ti.type, w.data(), wd.data(), n);
        return k.dot_f32(wd.data(), x.data(), n);
    }
    if (kind == cpu::ActKind::Q8A) {
        std::vector<cpu::BlockQ8A> a(static_cast<size_t>(n / 32));
        k.quantize_q8a(x.data(), a.data(), n);
        return dot(w.data(), a.data(), n);
    }
    if (kind == cpu::ActKind::Q8KA) {
        std::vector<cpu::BlockQ8KA> a(static_cast<size_t>(n / 256));
        k.quantize_q8ka(x.data(), a.data(), n);
        return dot(w.data(), a.data(), n);
    }
    return dot(w.data(), x.data(), n);
}

// gemm of nr weight rows (uint8 [nr, row bytes]) with nc activation rows (float32 [nc, n]), the
// activations quantized row by row as for dot: float32 [nc, nr]
// (packed: the rows repacked with the table's pack, then its gemm_packed: UnsupportedError when the
// table has no packed kernels for the type)
nb::ndarray<nb::numpy, float> kernel_gemm_impl(const std::string& table, const std::string& type_name, Bytes2 w, Floats2 x,
                                               bool packed) {
    const cpu::KernelTable& k = cpu::kernel_table(table);
    const TypeInfo& ti = supported_type(type_name);
    const int64_t nr = static_cast<int64_t>(w.shape(0)), nc = static_cast<int64_t>(x.shape(0)), n = static_cast<int64_t>(x.shape(1));
    const uint32_t id = static_cast<uint32_t>(ti.type);
    if (!k.gemm[id]) throw UnsupportedError(std::string("the ") + k.name + " table has no gemm for " + ti.name);
    if (packed && !k.gemm_packed[id])
        throw UnsupportedError(std::string("the ") + k.name + " table has no packed kernels for " + ti.name);
    const cpu::ActKind kind = k.act[id];
    const int64_t align = kind == cpu::ActKind::Q8KA ? 256 : kind == cpu::ActKind::Q8A ? 32 : ti.block_size;
    if (n % align != 0 || n % ti.block_size != 0 || w.shape(1) != row_bytes(ti, n))
        throw InputError(strprintf("gemm: %s rows of %zu bytes do not match %lld activations", ti.name,
                                   static_cast<size_t>(w.shape(1)), static_cast<long long>(n)));
    size_t lda = static_cast<size_t>(n) * sizeof(float);
    std::vector<uint8_t> qa;
    const void* act = x.data();
    if (kind == cpu::ActKind::Q8A) lda = static_cast<size_t>(n / 32) * sizeof(cpu::BlockQ8A);
    if (kind == cpu::ActKind::Q8KA) lda = static_cast<size_t>(n / 256) * sizeof(cpu::BlockQ8KA);
    if (kind != cpu::ActKind::F32) {
        qa.resize(lda * static_cast<size_t>(nc));
        for (int64_t c = 0; c < nc; ++c) {
            if (kind == cpu::ActKind::Q8A)
                k.quantize_q8a(x.data() + c * n, reinterpret_cast<cpu::BlockQ8A*>(qa.data() + lda * c), n);
            else
                k.quantize_q8ka(x.data() + c * n, reinterpret_cast<cpu::BlockQ8KA*>(qa.data() + lda * c), n);
        }
        act = qa.data();
    }
    std::vector<float> y(static_cast<size_t>(nr * nc));
    if (packed) {
        const size_t panel = cpu::packed_panel_bytes(ti.type, n);
        std::vector<uint8_t> wp(panel * static_cast<size_t>((nr + cpu::kPackRows - 1) / cpu::kPackRows) + 64);
        k.pack[id](w.data(), static_cast<size_t>(w.shape(1)), nr, n, wp.data());
        k.gemm_packed[id](wp.data(), nr, act, lda, nc, n, y.data(), static_cast<size_t>(nr));
    } else {
        k.gemm[id](w.data(), static_cast<size_t>(w.shape(1)), nr, act, lda, nc, n, y.data(), static_cast<size_t>(nr));
    }
    auto* heap = new std::vector<float>(std::move(y));
    nb::capsule owner(heap, [](void* p) noexcept { delete static_cast<std::vector<float>*>(p); });
    const size_t shape[2] = {static_cast<size_t>(nc), static_cast<size_t>(nr)};
    return nb::ndarray<nb::numpy, float>(heap->data(), 2, shape, owner);
}

nb::ndarray<nb::numpy, float> kernel_gemm(const std::string& table, const std::string& type_name, Bytes2 w, Floats2 x) {
    return kernel_gemm_impl(table, type_name, w, x, false);
}

nb::bytes kernel_quantize(const std::string& table, const std::string& kind, Floats x) {
    const cpu::KernelTable& k = cpu::kernel_table(table);
    const int64_t n = static_cast<int64_t>(x.size());
    if (kind == "q8a") {
        if (n % 32) throw InputError("q8a: the length must be a multiple of 32");
        std::vector<cpu::BlockQ8A> a(static_cast<size_t>(n / 32));
        k.quantize_q8a(x.data(), a.data(), n);
        return nb::bytes(reinterpret_cast<const char*>(a.data()), a.size() * sizeof(cpu::BlockQ8A));
    }
    if (kind == "q8ka") {
        if (n % 256) throw InputError("q8ka: the length must be a multiple of 256");
        std::vector<cpu::BlockQ8KA> a(static_cast<size_t>(n / 256));
        k.quantize_q8ka(x.data(), a.data(), n);
        return nb::bytes(reinterpret_cast<const char*>(a.data()), a.size() * sizeof(cpu::BlockQ8KA));
    }
    throw InputError("unknown activation format '" + kind + "' (valid: q8a, q8ka)");
}

}  // namespace

void aircache_bind_kernels(nb::module_& m) {
    m.def("_kernel_names", &cpu::available_kernels,
          "Kernel tables compiled in and supported by this CPU, best last (test hook).");
    m.def("_kernel_current", []() { return std::string(cpu::kernels().name); },
          "Name of the kernel table in use (AIRCACHE_KERNELS or the best available) (test hook).");
    m.def("_kernel_set", &cpu::set_kernels, nb::arg("name"), "Force a kernel table by name, or 'auto' (test hook).");
    m.def("_kernel_act", [](const std::string& table, const std::string& type_name) {
        const cpu::ActKind kind = cpu::kernel_table(table).act_kind(supported_type(type_name).type);
        return std::string(kind == cpu::ActKind::Q8A ? "q8a" : kind == cpu::ActKind::Q8KA ? "q8ka" : "f32");
    }, nb::arg("table"), nb::arg("type_name"), "Activation format ('f32', 'q8a', 'q8ka') of a type's dot (test hook).");
    m.def("_kernel_dot", &kernel_dot, nb::arg("table"), nb::arg("type_name"), nb::arg("weight_bytes"), nb::arg("x"),
          "Dot of one weight row (raw blocks) with float32 activations x, quantized as the table's dot for "
          "this type reads them (types without a dot: dequantize + dot_f32) (test hook).");
    m.def("_kernel_gemm", &kernel_gemm, nb::arg("table"), nb::arg("type_name"), nb::arg("w"), nb::arg("x"),
          "gemm of weight rows w (uint8 [nr, row bytes]) with activation rows x (float32 [nc, n], quantized as for "
          "_kernel_dot): float32 [nc, nr] (test hook).");
    m.def("_kernel_gemm_packed", [](const std::string& table, const std::string& type_name, Bytes2 w, Floats2 x) {
        return kernel_gemm_impl(table, type_name, w, x, true);
    }, nb::arg("table"), nb::arg("type_name"), nb::arg("w"), nb::arg("x"),
          "As _kernel_gemm through the table's repacked layout (pack + gemm_packed) (test hook).");
    m.def("_kernel_packed_types", [](const std::string& table) {
        const cpu::KernelTable& k = cpu::kernel_table(table);
        std::vector<std::string> v;
        for (int i = 0; i < cpu::kTypeSlots; ++i)
            if (k.gemm_packed[i]) v.push_back(type_info(static_cast<GGMLType>(i)).name);
        return v;
    }, nb::arg("table"), "Weight types with repacked kernels in a table (test hook).");
    m.def("_kernel_quantize", &kernel_quantize, nb::arg("table"), nb::arg("kind"), nb::arg("x"),
          "Raw BlockQ8A ('q8a') or BlockQ8KA ('q8ka') blocks of x from the table's quantizer (test hook).");
    m.def("_kernel_f16_to_f32", [](const std::string& table, Halves h) {
        std::vector<float> out(h.size());
        cpu::kernel_table(table).f16_to_f32(h.data(), out.data(), static_cast<int64_t>(h.size()));
        return to_numpy(std::move(out));
    }, nb::arg("table"), nb::arg("h"), "The table's f16_to_f32 on uint16 bit patterns (test hook).");
    m.def("_kernel_f32_to_f16", [](const std::string& table, Floats x) {
        std::vector<uint16_t> out(x.size());
        cpu::kernel_table(table).f32_to_f16(x.data(), out.data(), static_cast<int64_t>(x.size()));
        return to_numpy(std::move(out));
    }, nb::arg("table"), nb::arg("x"), "The table's f32_to_f16 (uint16 bit patterns) (test hook).");
}
