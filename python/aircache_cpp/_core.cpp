// _core — the nanobind module over the C++ API. Argument conversion and exception mapping only;
// the logic lives in cpp/. The Pythonic layer is in the .py files next to this one.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/unique_ptr.h>
#include <nanobind/stl/vector.h>

#include <cerrno>
#include <cstring>
#include <memory>

#include "common.h"
#include "gguf.h"
#include "quants.h"
#include "runtime_info.h"
#if defined(AIRCACHE_HAVE_CUDA)
#include "cuda_api.h"
#endif

namespace nb = nanobind;
using namespace aircache;

namespace {

using ByteArray = nb::ndarray<const uint8_t, nb::ndim<1>, nb::c_contig, nb::device::cpu>;
using FloatArray = nb::ndarray<nb::numpy, float>;

// A float32 numpy array owning `data`, with the given (numpy-order) shape.
FloatArray make_float_array(std::unique_ptr<float[]> data, const std::vector<size_t>& shape) {
    float* p = data.release();
    nb::capsule owner(p, [](void* q) noexcept { delete[] static_cast<float*>(q); });
    return FloatArray(p, shape.size(), shape.data(), owner);
}

nb::object str_from(std::string_view s) {
    PyObject* o = PyUnicode_DecodeUTF8(s.data(), static_cast<Py_ssize_t>(s.size()), "replace");
    if (!o) throw nb::python_error();
    return nb::steal(o);
}

nb::object scalar_to_py(const GGUFValue& v, uint64_t i) {
    switch (v.elem) {
        case GGUFType::FLOAT32: case GGUFType::FLOAT64: return nb::float_(v.float_at(i));
        case GGUFType::BOOL: return nb::bool_(v.int_at(i) != 0);
        case GGUFType::UINT64: return nb::int_(v.uint_at(i));
        case GGUFType::STRING: return str_from(v.strings[i]);
        default: return nb::int_(v.int_at(i));
    }
}

nb::object value_to_py(const GGUFValue& v) {
    if (!v.is_array()) return scalar_to_py(v, 0);
    nb::list l;
    for (uint64_t i = 0; i < v.count; ++i) l.append(scalar_to_py(v, i));
    return std::move(l);
}

const TypeInfo& type_from_py(nb::handle t) {
    const TypeInfo* ti = nullptr;
    if (nb::isinstance<nb::str>(t)) {
        std::string name = nb::cast<std::string>(t);
        ti = type_info_by_name(name);
        if (!ti) throw InputError("unknown ggml type name '" + name + "'");
    } else {
        long long id = nb::cast<long long>(t);
        if (id < 0 || id > 0xFFFFFFFFLL || !(ti = type_info(static_cast<uint32_t>(id))))
            throw FormatError(strprintf("unknown ggml type id %lld", id));
    }
    return *ti;
}

nb::dict type_dict(const TypeInfo& ti) {
    nb::dict d;
    d["name"] = ti.name;
    d["id"] = static_cast<uint32_t>(ti.type);
    d["block_size"] = ti.block_size;
    d["type_size"] = ti.type_size;
    d["supported"] = ti.supported;
    return d;
}

int64_t element_count(const TypeInfo& ti, size_t nbytes, nb::handle n_obj) {
    require_supported(ti.type, "data");
    if (n_obj.is_none()) {
        if (nbytes % static_cast<size_t>(ti.type_size) != 0)
            throw InputError(strprintf("%zu bytes is not a whole number of %s blocks (%lld bytes each)", nbytes, ti.name,
                                       static_cast<long long>(ti.type_size)));
        return static_cast<int64_t>(nbytes / static_cast<size_t>(ti.type_size)) * ti.block_size;
    }
    const int64_t n = nb::cast<int64_t>(n_obj);
    if (n < 0 || n % ti.block_size != 0)
        throw InputError(strprintf("n = %lld is not a non-negative multiple of the %s block size %lld",
                                   static_cast<long long>(n), ti.name, static_cast<long long>(ti.block_size)));
    if (row_bytes(ti, n) > nbytes)
        throw InputError(strprintf("%lld elements of %s need %zu bytes, got %zu", static_cast<long long>(n), ti.name,
                                   row_bytes(ti, n), nbytes));
    return n;
}

// Python-side handle of an open GGUF file.
class PyGGUFFile {
public:
    explicit PyGGUFFile(const std::string& path) {
        nb::gil_scoped_release nogil;
        f_ = GGUFFile::open(path);
    }
    const GGUFFile& f() const {
        if (!f_) throw InputError("the GGUF file is closed");
        return *f_;
    }
    void close() { f_.reset(); }
    bool closed() const { return !f_; }

    nb::dict metadata() const {
        nb::dict d;
        for (const GGUFKV& kv : f().kvs()) d[str_from(kv.key)] = value_to_py(kv.value);
        return d;
    }
    nb::dict metadata_types() const {
        nb::dict d;
        for (const GGUFKV& kv : f().kvs()) d[str_from(kv.key)] = kv.value.type_name();
        return d;
    }
    nb::list tensors() const {
        nb::list l;
        const GGUFFile& g = f();
        for (const GGUFTensorInfo& t : g.tensors()) {
            nb::dict d;
            d["name"] = str_from(t.name);
            d["type"] = t.info->name;
            d["type_id"] = static_cast<uint32_t>(t.type);
            nb::list ne;
            for (uint32_t i = 0; i < t.n_dims; ++i) ne.append(t.ne[i]);
            d["ne"] = nb::tuple(ne);
            d["offset"] = t.offset;
            d["data_offset"] = g.data_offset() + t.offset;
            d["n_bytes"] = t.nbytes;
            d["n_elements"] = t.n_elements;
            l.append(d);
        }
        return l;
    }
    nb::object get(const std::string& key, const std::string& kind) const {
        const GGUFFile& g = f();
        if (kind == "u32") return nb::int_(g.get_u32(key));
        if (kind == "i32") return nb::int_(g.get_i32(key));
        if (kind == "u64") return nb::int_(g.get_u64(key));
        if (kind == "i64") return nb::int_(g.get_i64(key));
        if (kind == "f32") return nb::float_(g.get_f32(key));
        if (kind == "bool") return nb::bool_(g.get_bool(key));
        if (kind == "str") return str_from(g.get_str(key));
        if (kind == "str_array") {
            nb::list l;
            for (std::string_view s : g.get_str_array(key)) l.append(str_from(s));
            return std::move(l);
        }
        if (kind == "f32_array") return nb::cast(g.get_f32_array(key));
        if (kind == "int_array") return nb::cast(g.get_int_array(key));
        throw InputError("unknown kind '" + kind + "' (valid: u32, i32, u64, i64, f32, bool, str, str_array, "
                         "f32_array, int_array)");
    }
    nb::bytes raw(const std::string& name) const {
        const GGUFTensorInfo& t = f().tensor(name);
        return nb::bytes(reinterpret_cast<const char*>(t.data), static_cast<size_t>(t.nbytes));
    }
    FloatArray dequantize(const std::string& name) const {
        const GGUFTensorInfo& t = f().tensor(name);
        require_supported(t.type, "tensor '" + printable(t.name) + "' in " + f().path());
        std::unique_ptr<float[]> out(new float[static_cast<size_t>(t.n_elements)]);
        {
            nb::gil_scoped_release nogil;
            dequantize_row(t.type, t.data, out.get(), t.n_elements);
        }
        std::vector<size_t> shape;
        for (int i = static_cast<int>(t.n_dims) - 1; i >= 0; --i) shape.push_back(static_cast<size_t>(t.ne[i]));
        return make_float_array(std::move(out), shape);
    }

private:
    std::unique_ptr<GGUFFile> f_;
};

void translate_special(const std::exception_ptr& p, void*) {
    try {
        std::rethrow_exception(p);
    } catch (const IOError& e) {
        PyObject* args = Py_BuildValue("(isN)", e.err(), std::strerror(e.err()),
                                       PyUnicode_DecodeFSDefault(e.path().c_str()));
        if (args) {
            PyErr_SetObject(PyExc_OSError, args);
            Py_DECREF(args);
        }
    } catch (const OutOfMemory& e) {
        PyErr_SetString(PyExc_MemoryError, e.what());
    }
}

}  // namespace

// Bindings defined in the other bind_<area>.cpp files of this directory.
void aircache_bind_engine(nb::module_& m);
void aircache_bind_tokenizer(nanobind::module_& m);
void aircache_bind_image(nb::module_& m);
void aircache_bind_ops(nb::module_& m);
void aircache_bind_kernels(nb::module_& m);
// [bind declarations]

NB_MODULE(_core, m) {
    m.doc() = "aircache.cpp core (C++/CUDA); use the aircache_cpp package, not this module directly";
    m.attr("__version__") = AIRCACHE_VERSION;

    // Exceptions: a common base, and ValueError subclasses for bad files, unsupported requests
    // and bad input. Registered base first: nanobind tries the most recent translator first.
    nb::exception<Error> base(m, "Error", PyExc_RuntimeError);
    nb::exception<FormatError>(m, "FormatError", nb::make_tuple(base, nb::handle(PyExc_ValueError)));
    nb::exception<UnsupportedError>(m, "UnsupportedError", nb::make_tuple(base, nb::handle(PyExc_ValueError)));
    nb::exception<InputError>(m, "InputError", nb::make_tuple(base, nb::handle(PyExc_ValueError)));
    nb::register_exception_translator(translate_special, nullptr);

    m.def("build_info", []() {
        BuildInfo b = build_info();
        nb::dict d;
        d["version"] = b.version;
        d["compiler"] = b.compiler;
        d["build_type"] = b.build_type;
        d["cuda"] = b.cuda;
        d["cuda_compiler"] = b.cuda_compiler;
        d["cuda_architectures"] = b.cuda_architectures;
        d["cuda_gemm"] = b.cuda_gemm;
        d["simd_compiled"] = b.simd_compiled;
        d["simd_cpu"] = b.simd_cpu;
        d["system"] = b.system;
        d["image_formats"] = b.image_formats;
        return d;
    }, "Version, compiler, CUDA (built or not, architectures) and SIMD features of this build.");
    m.def("build_info_text", &build_info_text, "build_info() as the text `aircache-cli --version` prints.");
    m.def("cuda_available", &cuda_available, "True when CUDA is built in and a usable GPU and driver are present.");
    m.def("cuda_device_count", &cuda_device_count, "Number of usable CUDA devices (0 without CUDA, driver or GPU).");

    m.def("type_info", [](nb::handle t) { return type_dict(type_from_py(t)); }, nb::arg("type"),
          "Block geometry of a ggml type given by name ('Q4_K') or id.");
    m.def("types", []() {
        nb::list l;
        for (uint32_t id = 0; id < 64; ++id)
            if (const TypeInfo* ti = type_info(id)) l.append(type_dict(*ti));
        return l;
    }, "Every ggml type this runtime knows, with its geometry and whether it is supported.");

    m.def("dequantize", [](ByteArray data, nb::handle type, nb::handle n) {
        const TypeInfo& ti = type_from_py(type);
        const int64_t count = element_count(ti, data.size(), n);
        std::unique_ptr<float[]> out(new float[static_cast<size_t>(count)]);
        {
            nb::gil_scoped_release nogil;
            dequantize_row(ti.type, data.data(), out.get(), count);
        }
        return make_float_array(std::move(out), {static_cast<size_t>(count)});
    }, nb::arg("data"), nb::arg("type"), nb::arg("n").none() = nb::none(),
       "Dequantize raw ggml blocks (uint8 array) of `type` to float32 on the CPU.");

    m.def("cuda_dequantize", [](ByteArray data, nb::handle type, nb::handle n, int device) {
        const TypeInfo& ti = type_from_py(type);
        const int64_t count = element_count(ti, data.size(), n);
#if defined(AIRCACHE_HAVE_CUDA)
        if (!cuda_available()) throw UnsupportedError("CUDA is built in but no usable GPU/driver was found");
        std::unique_ptr<float[]> out(new float[static_cast<size_t>(count)]);
        {
            nb::gil_scoped_release nogil;
            cuda::dequantize_on_device(ti.type, data.data(), data.size(), out.get(), count, device);
        }
        return make_float_array(std::move(out), {static_cast<size_t>(count)});
#else
        (void)count; (void)device;
        throw UnsupportedError("this build of aircache_cpp has no CUDA support (built without nvcc)");
#endif
    }, nb::arg("data"), nb::arg("type"), nb::arg("n").none() = nb::none(), nb::arg("device") = 0,
       "Dequantize raw ggml blocks on a CUDA device (same results as dequantize()).");

    nb::class_<PyGGUFFile>(m, "GGUFFile", "A memory-mapped, validated GGUF file.")
        .def(nb::init<const std::string&>(), nb::arg("path"))
        .def_prop_ro("path", [](const PyGGUFFile& s) { return s.f().path(); })
        .def_prop_ro("version", [](const PyGGUFFile& s) { return s.f().version(); })
        .def_prop_ro("alignment", [](const PyGGUFFile& s) { return s.f().alignment(); })
        .def_prop_ro("data_offset", [](const PyGGUFFile& s) { return s.f().data_offset(); })
        .def_prop_ro("file_size", [](const PyGGUFFile& s) { return s.f().file_size(); })
        .def_prop_ro("closed", &PyGGUFFile::closed)
        .def("metadata", &PyGGUFFile::metadata, "All metadata as {key: value} (arrays as lists).")
        .def("metadata_types", &PyGGUFFile::metadata_types, "{key: 'UINT32' | 'ARRAY[STRING]' | ...}.")
        .def("tensors", &PyGGUFFile::tensors, "The tensor table as a list of dicts.")
        .def("get", &PyGGUFFile::get, nb::arg("key"), nb::arg("kind"),
             "Typed metadata getter (lenient integers, like the C++ loaders use).")
        .def("raw", &PyGGUFFile::raw, nb::arg("name"), "A tensor's raw bytes (a copy).")
        .def("dequantize", &PyGGUFFile::dequantize, nb::arg("name"),
             "A tensor as float32, in numpy shape order (ne reversed).")
        .def("close", &PyGGUFFile::close, "Unmap the file.");

    aircache_bind_engine(m);
    aircache_bind_tokenizer(m);
    aircache_bind_image(m);
    aircache_bind_ops(m);
    aircache_bind_kernels(m);
    // [bind calls]
}
