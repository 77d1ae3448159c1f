// bind_engine.cpp — _core.Engine: a loaded model (argument conversion only; logic in cpp/engine).
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include <memory>

#include "common.h"
#include "engine.h"

namespace nb = nanobind;
using namespace aircache;

namespace {

using IdArray = nb::ndarray<const int32_t, nb::ndim<1>, nb::c_contig, nb::device::cpu>;

nb::ndarray<nb::numpy, float> to_numpy(std::vector<float>&& v, std::vector<size_t> shape) {
    auto* heap = new std::vector<float>(std::move(v));
    nb::capsule owner(heap, [](void* p) noexcept { delete static_cast<std::vector<float>*>(p); });
    return nb::ndarray<nb::numpy, float>(heap->data(), shape.size(), shape.data(), owner);
}

}  // namespace

void aircache_bind_engine(nb::module_& m) {
    nb::class_<Engine>(m, "Engine", "A loaded model with its KV cache and thread pool.")
        .def("__init__",
             [](Engine* self, const std::string& path, int64_t n_ctx, int n_threads, int64_t n_batch,
                const std::string& kv_type) {
                 EngineParams p;
                 p.model_path = path;
                 p.n_ctx = n_ctx;
                 p.n_threads = n_threads;
                 p.n_batch = n_batch;
                 p.kv_type = kv_type_from_name(kv_type);
                 nb::gil_scoped_release nogil;
                 new (self) Engine(p);
             },
             nb::arg("model_path"), nb::arg("n_ctx") = 4096, nb::arg("n_threads") = 0, nb::arg("n_batch") = 512,
             nb::arg("kv_type") = "f16")
        .def("logits",
             [](Engine& e, IdArray ids) {
                 std::vector<int32_t> v(ids.data(), ids.data() + ids.size());
                 std::vector<float> out;
                 {
                     nb::gil_scoped_release nogil;
                     out = e.logits(v);
                 }
                 return to_numpy(std::move(out), {v.size(), static_cast<size_t>(e.config().n_vocab)});
             },
             nb::arg("ids"))
        .def_prop_ro("n_vocab", [](const Engine& e) { return e.config().n_vocab; })
        .def_prop_ro("n_embd", [](const Engine& e) { return e.config().n_embd; })
        .def_prop_ro("n_layer", [](const Engine& e) { return e.config().n_layer; })
        .def_prop_ro("n_head", [](const Engine& e) { return e.config().n_head; })
        .def_prop_ro("n_head_kv", [](const Engine& e) { return e.config().n_head_kv; })
        .def_prop_ro("n_ctx", [](const Engine& e) { return e.params().n_ctx; })
        .def_prop_ro("n_ctx_train", [](const Engine& e) { return e.config().n_ctx_train; })
        .def_prop_ro("n_threads", [](const Engine& e) { return e.params().n_threads; })
        .def_prop_ro("architecture", [](const Engine& e) { return e.config().arch; })
        .def_prop_ro("kv_type", [](const Engine& e) { return std::string(kv_type_name(e.params().kv_type)); });
}
