#include "tensor.h"

#include <atomic>
#include <cmath>
#include <vector>

#include "common.h"
#include "threadpool.h"

namespace aircache {

Weight Weight::from(const GGUFTensorInfo& t, const std::string& file) {
    require_supported(t.type, "tensor '" + printable(t.name) + "' in " + file);
    Weight w;
    w.name = t.name;
    w.type = t.type;
    w.info = t.info;
    w.n_cols = t.ne[0];
    w.n_rows = t.n_rows();
    w.row_bytes = aircache::row_bytes(*t.info, t.ne[0]);
    w.data = t.data;
    return w;
}

std::vector<float> dequantize_tensor(const GGUFTensorInfo& t, const std::string& file) {
    require_supported(t.type, "tensor '" + printable(t.name) + "' in " + file);
    std::vector<float> out(static_cast<size_t>(t.n_elements));
    dequantize_row(t.type, t.data, out.data(), t.n_elements);
    return out;
}

void check_finite(const GGUFFile& f, const std::string& tensor, const float* v, int64_t n) {
    for (int64_t i = 0; i < n; ++i)
        if (!std::isfinite(v[i]))
            f.fail(strprintf("tensor '%s' holds %s at element %lld (a model's weights must be finite)",
                             printable(tensor).c_str(), std::isnan(v[i]) ? "NaN" : "an infinity",
                             static_cast<long long>(i)));
}

void check_all_tensors(const GGUFFile& f, ThreadPool& pool) {
    for (const GGUFTensorInfo& t : f.tensors()) {
        if (!t.info->supported || t.n_elements == 0) continue;
        const int64_t cols = t.ne[0], rows = t.n_elements / cols;
        const size_t rb = row_bytes(*t.info, cols);
        std::atomic<int64_t> bad{-1};
        pool.parallel_for(rows, [&](int64_t r0, int64_t r1) {
            std::vector<float> row(static_cast<size_t>(cols));
            for (int64_t r = r0; r < r1 && bad.load(std::memory_order_relaxed) < 0; ++r) {
                dequantize_row(t.type, t.data + static_cast<size_t>(r) * rb, row.data(), cols);
                for (int64_t c = 0; c < cols; ++c)
                    if (!std::isfinite(row[static_cast<size_t>(c)])) {
                        int64_t expect = -1;
                        bad.compare_exchange_strong(expect, r * cols + c);
                        break;
                    }
            }
        }, 64);
        if (bad >= 0)
            f.fail(strprintf("tensor '%s' holds a NaN or an infinity at row %lld, column %lld (check_tensors)",
                             printable(t.name).c_str(), static_cast<long long>(bad / cols),
                             static_cast<long long>(bad % cols)));
    }
}

}  // namespace aircache

