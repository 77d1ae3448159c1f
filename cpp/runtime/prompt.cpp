#include "runtime/prompt.h"

#include <algorithm>

#include "common.h"
#include "runtime/engine.h"

namespace aircache {

int64_t Prompt::n_visual() const {
    int64_t n = 0;
    for (const Segment& s : segments)
        if (s.item >= 0)
            for (int64_t r = 0; r < s.end - s.begin; ++r) n += media[static_cast<size_t>(s.item)].is_visual(r);
    return n;
}

compress::PromptLayout Prompt::layout(int64_t m) const {
    compress::PromptLayout l;
    l.m = m < 0 ? size() : std::min(m, size());
    l.is_visual.assign(static_cast<size_t>(l.m), 0);
    for (const Segment& s : segments) {
        if (s.item < 0) continue;
        const MediaItem& it = media[static_cast<size_t>(s.item)];
        if (it.bidirectional && s.begin < l.m) {
            if (l.key_end.empty())
                for (int64_t r = 0; r < l.m; ++r) l.key_end.push_back(static_cast<int32_t>(r + 1));
            for (int64_t r = s.begin; r < std::min(s.end, l.m); ++r)
                l.key_end[static_cast<size_t>(r)] = static_cast<int32_t>(std::min(s.end, l.m));
        }
        const size_t before = l.visual.size();
        for (int64_t r = s.begin; r < std::min(s.end, l.m); ++r)
            if (it.is_visual(r - s.begin)) {
                l.visual.push_back(static_cast<int32_t>(r));
                l.is_visual[static_cast<size_t>(r)] = 1;
            }
        l.n_images += l.visual.size() > before;
    }
    return l;
}

size_t Prompt::items_before(int64_t r) const {
    size_t n = 0;
    for (const Segment& s : segments)
        if (s.item >= 0 && s.begin < r) ++n;
    return n;
}

namespace {

void check_ids(const Engine& e, const std::vector<int32_t>& ids) {
    const int64_t n = static_cast<int64_t>(ids.size()), V = e.config().n_vocab;
    if (n == 0) throw InputError("the input sequence is empty");
    if (n > e.params().n_ctx)
        throw InputError(strprintf("the sequence is %lld positions, longer than the context (n_ctx = %lld)",
                                   static_cast<long long>(n), static_cast<long long>(e.params().n_ctx)));
    for (int64_t i = 0; i < n; ++i) {
        const int32_t id = ids[static_cast<size_t>(i)];
        if (e.has_vision() && id == e.image_token_id()) continue;
        if (id < 0 || id >= V)
            throw InputError(strprintf("token id %d at position %lld is outside the vocabulary [0, %lld)", id,
                                       static_cast<long long>(i), static_cast<long long>(V)));
    }
}

bool literal_at(const std::vector<uint8_t>& literal, size_t i) { return i < literal.size() && literal[i] != 0; }

int64_t image_rows(const Engine& e, const std::vector<int32_t>& ids, const std::vector<uint8_t>& literal) {
    if (!e.has_vision()) return 0;
    int64_t n = 0;
    for (size_t i = 0; i < ids.size(); ++i) n += ids[i] == e.image_token_id() && !literal_at(literal, i);
    return n;
}

}  // namespace

void check_sequence(const Engine& e, const std::vector<int32_t>& ids, const std::vector<int64_t>& counts,
                    const std::vector<uint8_t>& literal) {
    check_ids(e, ids);
    if (!counts.empty() && !e.has_vision()) e.vision();  // InputError: no mmproj
    int64_t need = 0;
    for (int64_t c : counts) need += c;
    const int64_t have = image_rows(e, ids, literal);
    if (have != need)
        throw InputError(strprintf("the sequence holds %lld image positions (id %d) but the %zu image(s) need %lld",
                                   static_cast<long long>(have), e.has_vision() ? e.image_token_id() : -1,
                                   counts.size(), static_cast<long long>(need)));
    // every run of image rows is made of whole images (where marker tokens sit between an image's
    // rows, SmolVLM's tiles, make_prompt checks each image's rows against its layout instead)
    if (e.has_vision() && e.vision().has_markup()) return;
    size_t k = 0;
    for (size_t i = 0; i < ids.size();) {
        if (!e.has_vision() || ids[i] != e.image_token_id() || literal_at(literal, i)) {
            ++i;
            continue;
        }
        size_t j = i;
        while (j < ids.size() && ids[j] == e.image_token_id() && !literal_at(literal, j)) ++j;
        int64_t run = static_cast<int64_t>(j - i);
        while (run > 0 && k < counts.size()) run -= counts[k++];
        if (run != 0)
            throw InputError(strprintf("the image positions at %zu..%zu do not match the images' token counts (image %zu "
                                       "needs %lld)", i, j - 1, k > 0 ? k - 1 : 0,
                                       static_cast<long long>(counts[k > 0 ? k - 1 : 0])));
        i = j;
    }
}

namespace {

// An item with a layout as the rows it takes: marker rows hold their token, the embeddings spread
// over the other rows in order.
MediaItem place_markers(MediaItem it) {
    if (it.layout.empty()) return it;
    int64_t n_embd_rows = 0;
    for (int32_t t : it.layout) n_embd_rows += t < 0;
    if (n_embd_rows != it.n_rows || !it.pos.empty() || !it.visual.empty() || it.n_deepstack > 0)
        throw Error("internal: an image's layout does not match its item");
    const int64_t E = it.n_embd, n = static_cast<int64_t>(it.layout.size());
    std::vector<float> embd(static_cast<size_t>(n * E), 0.0f);
    int64_t k = 0;
    for (int64_t r = 0; r < n; ++r)
        if (it.layout[static_cast<size_t>(r)] < 0) {
            std::copy_n(it.embd.begin() + k * E, E, embd.begin() + r * E);
            ++k;
        }
    it.embd = std::move(embd);
    it.tokens = std::move(it.layout);
    it.layout.clear();
    it.n_rows = n;
    return it;
}

}  // namespace

Prompt make_prompt(const Engine& e, std::vector<int32_t> ids, std::vector<MediaItem> media,
                   const std::vector<uint8_t>& literal) {
    check_ids(e, ids);
    Prompt p;
    p.ids = std::move(ids);
    p.media = std::move(media);
    const int64_t n = p.size();
    const int32_t img = e.has_vision() ? e.image_token_id() : -1;
    if (!p.media.empty()) e.vision();
    size_t k = 0;
    int64_t text0 = 0;
    for (int64_t r = 0; r < n;) {
        if (p.ids[static_cast<size_t>(r)] != img || img < 0 || literal_at(literal, static_cast<size_t>(r))) {
            ++r;
            continue;
        }
        if (k >= p.media.size())
            throw InputError(strprintf("the sequence holds image positions from %lld on but only %zu image(s) were given",
                                       static_cast<long long>(r), p.media.size()));
        p.media[k] = place_markers(std::move(p.media[k]));
        const MediaItem& it = p.media[k];
        if (r + it.n_rows > n)
            throw InputError(strprintf("image %zu needs %lld positions from %lld on, but the sequence ends at %lld", k,
                                       static_cast<long long>(it.n_rows), static_cast<long long>(r),
                                       static_cast<long long>(n)));
        for (int64_t i = 0; i < it.n_rows; ++i) {
            const int32_t want = it.is_embedding(i) ? img : it.tokens[static_cast<size_t>(i)];
            if (p.ids[static_cast<size_t>(r + i)] != want)
                throw InputError(strprintf("image %zu takes %lld positions (from %lld), but position %lld holds id %d "
                                           "where the image needs %d", k, static_cast<long long>(it.n_rows),
                                           static_cast<long long>(r), static_cast<long long>(r + i),
                                           p.ids[static_cast<size_t>(r + i)], want));
        }
        if (r > text0) p.segments.push_back(Segment{text0, r, -1});
        p.segments.push_back(Segment{r, r + it.n_rows, static_cast<int>(k)});
        r += it.n_rows;
        text0 = r;
        ++k;
    }
    if (n > text0) p.segments.push_back(Segment{text0, n, -1});
    if (k != p.media.size())
        throw InputError(strprintf("%zu image(s) were given but the sequence holds image positions for %zu",
                                   p.media.size(), k));
    return p;
}

}  // namespace aircache
