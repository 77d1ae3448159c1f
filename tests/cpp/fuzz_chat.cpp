// libFuzzer target for the chat layer: template detection from a file's Jinja text and a name,
// the prompt template with images, conversations through render_chat, and the image-marker split.
// Checked on every input:
//   - chat_template_for throws only InputError, and only for a name that is not "", "auto" or a
//     built-in template's;
//   - apply_chat_template's text holds exactly n_images markers (or it throws InputError because
//     the prompt's markers do not match the images);
//   - render_chat keeps every text part and places a marker per image part (or throws InputError
//     for a bad role, a late system message, or an image outside a user message);
//   - split_at_image_markers gives markers + 1 pieces that, with the markers, make up the text.
//
//   ./fuzz_chat -max_total_time=60 CORPUS_DIR
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "chat.h"
#include "common.h"
#include "fuzz_common.h"

using namespace aircache;

namespace {

[[noreturn]] void fail(const char* what, const std::string& text) {
    std::fprintf(stderr, "fuzz_chat: %s\n  text (%zu bytes): ", what, text.size());
    for (unsigned char c : text) std::fprintf(stderr, "%02x", c);
    std::fprintf(stderr, "\n");
    std::abort();
}

// Markers of `text` (leftmost first, not overlapping) and the bytes they take, counted here
// independently of chat.cpp.
void count_markers(const std::string& text, size_t& n, size_t& bytes) {
    const std::string m1 = kImageMarker, m2 = kImageMarkerAlt;
    n = bytes = 0;
    for (size_t i = 0; i < text.size();) {
        if (text.compare(i, m1.size(), m1) == 0) {
            ++n, bytes += m1.size(), i += m1.size();
        } else if (text.compare(i, m2.size(), m2) == 0) {
            ++n, bytes += m2.size(), i += m2.size();
        } else {
            ++i;
        }
    }
}

size_t markers(const std::string& text) {
    size_t n, b;
    count_markers(text, n, b);
    return n;
}

const char* const kNames[] = {"", "auto", "llava", "chatml", "none", "qwen2-vl", "qwen3-vl", "gemma3", "smolvlm"};

// The text as a template puts a user's text: Qwen templates wrap every marker in the vision markers
// (an <__media__> marker becomes <image>).
std::string as_placed(ChatTemplate t, const std::string& text) {
    if (t != ChatTemplate::Qwen2VL && t != ChatTemplate::Qwen3VL) return text;
    const std::vector<std::string> pieces = split_at_image_markers(text);
    std::string out = pieces[0];
    for (size_t i = 1; i < pieces.size(); ++i) out += "<|vision_start|><image><|vision_end|>" + pieces[i];
    return out;
}
const char* const kJinja[] = {"", "<|im_start|>", "USER: {{ m }} ASSISTANT:", "{% for m in messages %}",
                              "<|im_start|>{{ m }}<end_of_utterance>"};
const char* const kRoles[] = {"system", "user", "assistant", "tool", "User", ""};
const char* const kPieces[] = {"<image>", "<__media__>", "<ima", "ge>", "<|im_end|>", "</s>", "\n", " ", "\xff", "\xE2\x96\x81"};

// A short text: fuzz bytes with the tricky pieces mixed in.
std::string text_of(fuzz::Bytes& in) {
    std::string s;
    const int n = in.u8() % 6;
    for (int i = 0; i < n && !in.empty(); ++i) {
        const uint8_t k = in.u8();
        if (k < 40) s += kPieces[k % (sizeof kPieces / sizeof *kPieces)];
        else s += in.str(12);
    }
    return s;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    fuzz::Bytes in(data, size);
    const uint8_t head = in.u8();

    // template detection: a built-in Jinja or fuzz text, a known name or fuzz text
    const std::string jinja = (head & 1) ? text_of(in) : kJinja[(head >> 1) % 5];
    const bool fuzz_name = head & 8;
    const std::string name = fuzz_name ? in.str(8) : kNames[(head >> 4) % (sizeof kNames / sizeof *kNames)];
    ChatTemplate t;
    try {
        t = chat_template_for(jinja, name);
    } catch (const InputError&) {
        for (const char* ok : kNames)
            if (name == ok) fail("chat_template_for refused a valid name", name);
        return 0;
    }
    (void)chat_template_name(t);
    (void)chat_assistant_end(t);

    // one prompt
    const std::string prompt = text_of(in);
    const int n_images = in.u8() % 4;
    try {
        const std::string text = apply_chat_template(t, prompt, n_images);
        if (markers(text) != static_cast<size_t>(n_images)) fail("apply_chat_template: markers != images", text);
        // (Gemma's template trims the text: only the markers are checked there)
        if (t != ChatTemplate::Gemma3 && text.find(as_placed(t, prompt)) == std::string::npos)
            fail("apply_chat_template lost the prompt", text);
    } catch (const InputError&) {
        if (markers(prompt) == static_cast<size_t>(n_images) || markers(prompt) == 0)
            fail("apply_chat_template refused matching markers", prompt);
    }

    // a conversation
    std::vector<ChatMessage> msgs;
    const int n_msgs = in.u8() % 5;
    size_t n_image_parts = 0;
    for (int i = 0; i < n_msgs; ++i) {
        ChatMessage m;
        m.role = kRoles[in.u8() % (sizeof kRoles / sizeof *kRoles)];
        const int n_parts = in.u8() % 4;
        for (int j = 0; j < n_parts; ++j) {
            ChatPart p;
            p.image = in.u8() % 3 == 0;
            if (!p.image) p.text = text_of(in);
            n_image_parts += p.image;
            m.parts.push_back(std::move(p));
        }
        msgs.push_back(std::move(m));
    }
    try {
        const std::string out = render_chat(t, msgs, head & 0x80);
        for (const ChatMessage& m : msgs) {
            if (t == ChatTemplate::Gemma3) continue;  // parts trimmed
            if (t == ChatTemplate::Qwen2VL || t == ChatTemplate::Qwen3VL) {
                // the message's text whole (a marker may span two parts: it is wrapped)
                std::string text;
                for (const ChatPart& p : m.parts) text += p.image ? "<image>" : p.text;
                if (out.find(as_placed(t, text)) == std::string::npos) fail("render_chat lost a text part", out);
                continue;
            }
            for (const ChatPart& p : m.parts)
                if (!p.image && out.find(p.text) == std::string::npos) fail("render_chat lost a text part", out);
        }
        if (markers(out) < n_image_parts) fail("render_chat: fewer markers than image parts", out);
    } catch (const InputError&) {
    }

    // the marker split, on the rest of the input
    const std::string rest = in.rest();
    const std::vector<std::string> pieces = split_at_image_markers(rest);
    size_t n, bytes;
    count_markers(rest, n, bytes);
    size_t total = 0;
    for (const std::string& p : pieces) total += p.size();
    if (pieces.size() != n + 1 || total + bytes != rest.size()) fail("split_at_image_markers", rest);
    return 0;
}
