#include "chat.h"

#include <cctype>

#include "common.h"

namespace aircache {

const char* const kImageMarker = "<image>";
const char* const kImageMarkerAlt = "<__media__>";

const char* chat_template_name(ChatTemplate t) {
    switch (t) {
        case ChatTemplate::None: return "none";
        case ChatTemplate::Llava: return "llava";
        case ChatTemplate::ChatML: return "chatml";
        case ChatTemplate::Qwen2VL: return "qwen2-vl";
        case ChatTemplate::Qwen3VL: return "qwen3-vl";
        case ChatTemplate::Gemma3: return "gemma3";
        case ChatTemplate::SmolVLM: return "smolvlm";
        case ChatTemplate::LlavaNextMistral: return "llava-next-mistral";
        case ChatTemplate::VicunaV1: return "vicuna-v1";
        case ChatTemplate::InternVL: return "internvl";
    }
    return "?";
}

std::vector<std::string> chat_template_names() {
    return {"llava", "chatml", "qwen2-vl", "qwen3-vl", "gemma3", "smolvlm", "llava-next-mistral", "vicuna-v1", "internvl", "none"};
}

namespace {

bool is_qwen(ChatTemplate t) { return t == ChatTemplate::Qwen2VL || t == ChatTemplate::Qwen3VL; }
bool is_chatml(ChatTemplate t) { return t == ChatTemplate::ChatML || is_qwen(t) || t == ChatTemplate::InternVL; }
const char* const kQwenSystem = "You are a helpful assistant.";
// LLaVA's conv_vicuna_v1 system message (the llava-v1.6-vicuna model cards' prompt)
const char* const kVicunaSystem =
    "A chat between a curious human and an artificial intelligence assistant. The assistant gives helpful, "
    "detailed, and polite answers to the human's questions.";
// InternVL 2.5 / 3's default system message (the "internvl2_5" conversation template, the checkpoints'
// chat template)
const char* const kInternVLSystem =
    "你是书生·万象，英文名是InternVL，是由上海人工智能实验室、清华大学及多家合作单位联合开发的多模态大语言模型。";

std::string qwen_image() { return std::string("<|vision_start|>") + kImageMarker + "<|vision_end|>"; }

std::string gemma_image() { return std::string("\n\n<start_of_image>") + kImageMarker + "<end_of_image>\n\n"; }

// Qwen and Gemma templates: every image marker wrapped as the family's processor writes it.
std::string wrap_images(const std::string& text, ChatTemplate t = ChatTemplate::Qwen2VL) {
    const std::vector<std::string> pieces = split_at_image_markers(text);
    std::string out = pieces[0];
    for (size_t i = 1; i < pieces.size(); ++i) out += (t == ChatTemplate::Gemma3 ? gemma_image() : qwen_image()) + pieces[i];
    return out;
}

// SmolVLM2's message: "{Role}" + ":" when the first part is an image, else ": " (Jinja's capitalize
// of the role), the parts with images as markers, "<end_of_utterance>\n".
std::string smolvlm_message(const std::string& role, const std::string& content, bool image_first) {
    std::string r = role;
    for (size_t i = 0; i < r.size(); ++i) {
        const int c = static_cast<unsigned char>(r[i]);
        r[i] = static_cast<char>(i == 0 ? std::toupper(c) : std::tolower(c));
    }
    return r + (image_first ? ":" : ": ") + content + "<end_of_utterance>\n";
}

// Jinja's trim: whitespace off both ends.
std::string trim(const std::string& s) {
    const char* ws = " \t\n\r\f\v";
    const size_t a = s.find_first_not_of(ws);
    if (a == std::string::npos) return "";
    return s.substr(a, s.find_last_not_of(ws) - a + 1);
}

}  // namespace

ChatTemplate chat_template_for(const std::string& jinja, const std::string& name) {
    if (name == "llava" || name == "vicuna" || name == "llava-1.5") return ChatTemplate::Llava;
    if (name == "chatml") return ChatTemplate::ChatML;
    if (name == "qwen2-vl" || name == "qwen2.5-vl") return ChatTemplate::Qwen2VL;
    if (name == "qwen3-vl") return ChatTemplate::Qwen3VL;
    if (name == "gemma3" || name == "gemma") return ChatTemplate::Gemma3;
    if (name == "smolvlm" || name == "smolvlm2" || name == "idefics3") return ChatTemplate::SmolVLM;
    if (name == "internvl" || name == "internvl2_5" || name == "internvl3") return ChatTemplate::InternVL;
    if (name == "llava-next-mistral" || name == "llava-1.6-mistral") return ChatTemplate::LlavaNextMistral;
    if (name == "vicuna-v1" || name == "llava-next-vicuna") return ChatTemplate::VicunaV1;
    if (name == "none" || name == "raw") return ChatTemplate::None;
    if (!name.empty() && name != "auto")
        throw InputError("unknown chat template '" + name +
                         "' (valid: auto, llava, chatml, qwen2-vl, qwen3-vl, gemma3, smolvlm, llava-next-mistral, vicuna-v1, internvl, none)");
    if (jinja.find("<start_of_turn>") != std::string::npos) return ChatTemplate::Gemma3;
    // SmolVLM's starts with <|im_start|> but is not ChatML (llama.cpp tells them apart the same way)
    if (jinja.find("<end_of_utterance>") != std::string::npos) return ChatTemplate::SmolVLM;
    if (jinja.find("<|vision_start|>") != std::string::npos)
        return jinja.find(kQwenSystem) != std::string::npos ? ChatTemplate::Qwen2VL : ChatTemplate::Qwen3VL;
    // InternVL 2.5 / 3: its system message (the original checkpoints) or its image token (the -hf ones)
    if (jinja.find("<|im_start|>") != std::string::npos &&
        (jinja.find("InternVL") != std::string::npos || jinja.find("<IMG_CONTEXT>") != std::string::npos))
        return ChatTemplate::InternVL;
    if (jinja.find("<|im_start|>") != std::string::npos) return ChatTemplate::ChatML;
    // llava-v1.6-mistral's "[INST] ... [/INST]" (Mistral-Instruct and Llama-2-chat templates too)
    if (jinja.find("[INST]") != std::string::npos) return ChatTemplate::LlavaNextMistral;
    return ChatTemplate::Llava;  // "USER: ... ASSISTANT:" templates, and files without one
}

std::vector<std::string> split_at_image_markers(const std::string& text) {
    std::vector<std::string> pieces;
    size_t pos = 0;
    std::string cur;
    while (pos < text.size()) {
        size_t a = text.find(kImageMarker, pos), b = text.find(kImageMarkerAlt, pos);
        size_t at = std::min(a, b);
        if (at == std::string::npos) break;
        pieces.push_back(text.substr(pos, at - pos));
        pos = at + (at == a ? std::string(kImageMarker).size() : std::string(kImageMarkerAlt).size());
    }
    pieces.push_back(text.substr(pos));
    return pieces;
}

std::string apply_chat_template(ChatTemplate t, const std::string& prompt, int n_images) {
    const int markers = static_cast<int>(split_at_image_markers(prompt).size()) - 1;
    std::string user = prompt;
    if (markers == 0 && n_images > 0) {
        std::string lead;
        for (int i = 0; i < n_images; ++i)
            lead += std::string(kImageMarker) +
                    (is_qwen(t) || t == ChatTemplate::Gemma3 || t == ChatTemplate::SmolVLM ? "" : "\n");
        user = lead + prompt;
    } else if (markers != n_images) {
        throw InputError(strprintf("the prompt has %d image markers (<image>) but %d images were given", markers,
                                   n_images));
    }
    switch (t) {
        case ChatTemplate::None: return user;
        case ChatTemplate::Llava: return "USER: " + user + " ASSISTANT:";
        case ChatTemplate::VicunaV1: return std::string(kVicunaSystem) + " USER: " + user + " ASSISTANT:";
        case ChatTemplate::LlavaNextMistral: return "[INST] " + user + " [/INST]";
        case ChatTemplate::ChatML: return "<|im_start|>user\n" + user + "<|im_end|>\n<|im_start|>assistant\n";
        case ChatTemplate::InternVL:
            return std::string("<|im_start|>system\n") + kInternVLSystem + "<|im_end|>\n<|im_start|>user\n" + user +
                   "<|im_end|>\n<|im_start|>assistant\n";
        case ChatTemplate::Qwen2VL:
        case ChatTemplate::Qwen3VL:
            return (t == ChatTemplate::Qwen2VL ? std::string("<|im_start|>system\n") + kQwenSystem + "<|im_end|>\n" : "") +
                   "<|im_start|>user\n" + wrap_images(user) + "<|im_end|>\n<|im_start|>assistant\n";
        case ChatTemplate::Gemma3:
            return "<start_of_turn>user\n" + wrap_images(trim(user), t) + "<end_of_turn>\n<start_of_turn>model\n";
        case ChatTemplate::SmolVLM:
            return "<|im_start|>" + smolvlm_message("user", user, split_at_image_markers(user)[0].empty() && n_images > 0) +
                   "Assistant:";
    }
    return user;
}

std::string chat_assistant_end(ChatTemplate t) {
    switch (t) {
        case ChatTemplate::None: return "";
        case ChatTemplate::Llava:
        case ChatTemplate::VicunaV1: return "</s>";
        case ChatTemplate::LlavaNextMistral: return "</s> ";
        case ChatTemplate::ChatML:
        case ChatTemplate::Qwen2VL:
        case ChatTemplate::Qwen3VL:
        case ChatTemplate::InternVL: return "<|im_end|>\n";
        case ChatTemplate::Gemma3: return "<end_of_turn>\n";
        case ChatTemplate::SmolVLM: return "<end_of_utterance>\n";
    }
    return "";
}

std::string render_chat(ChatTemplate t, const std::vector<ChatMessage>& messages, bool add_generation_prompt,
                        bool continuation) {
    std::string out, gemma_prefix;
    for (size_t i = 0; i < messages.size(); ++i) {
        const ChatMessage& m = messages[i];
        if (m.role != "system" && m.role != "user" && m.role != "assistant")
            throw InputError("unknown chat role '" + printable(m.role) + "' (valid: system, user, assistant)");
        if (m.role == "system" && i > 0) throw InputError("a system message must come first");
        if (i == 0 && !continuation && m.role != "system" && (t == ChatTemplate::Qwen2VL || t == ChatTemplate::InternVL))
            out += std::string("<|im_start|>system\n") + (t == ChatTemplate::InternVL ? kInternVLSystem : kQwenSystem) +
                   "<|im_end|>\n";
        if (i == 0 && !continuation && m.role != "system" && t == ChatTemplate::VicunaV1)
            out += std::string(kVicunaSystem) + " ";
        std::string text, images;
        for (const ChatPart& p : m.parts) {
            if (p.image) {
                if (m.role != "user") throw InputError("only user messages can hold images");
                text += std::string(kImageMarker) + (t == ChatTemplate::InternVL ? "\n" : "");
                images += std::string(kImageMarker) + "\n";
            } else {
                text += p.text;
            }
        }
        if (t == ChatTemplate::SmolVLM) {
            if (i == 0 && !continuation) out += "<|im_start|>";
            out += smolvlm_message(m.role, text, !m.parts.empty() && m.parts[0].image);
            continue;
        }
        if (t == ChatTemplate::Gemma3) {
            // HF's Gemma 3 template: each part trimmed (images as <start_of_image> there), a system
            // message's text + "\n\n" before the first user turn's content
            std::string content;
            for (const ChatPart& p : m.parts) content += p.image ? std::string(kImageMarker) : trim(p.text);
            if (m.role == "system") {
                gemma_prefix = content + "\n\n";
                continue;
            }
            out += "<start_of_turn>" + std::string(m.role == "assistant" ? "model" : "user") + "\n" + gemma_prefix +
                   wrap_images(content, t) + "<end_of_turn>\n";
            gemma_prefix.clear();
            continue;
        }
        switch (t) {
            case ChatTemplate::Gemma3:
            case ChatTemplate::SmolVLM:
            case ChatTemplate::None:
                out += text;
                break;
            case ChatTemplate::ChatML:
            case ChatTemplate::Qwen2VL:
            case ChatTemplate::Qwen3VL:
            case ChatTemplate::InternVL:
                out += "<|im_start|>" + m.role + "\n" + (is_qwen(t) ? wrap_images(text) : text) + "<|im_end|>\n";
                break;
            case ChatTemplate::LlavaNextMistral: {
                std::string plain;  // llava-v1.6-mistral-hf's template: the images first, then the text parts
                for (const ChatPart& p : m.parts)
                    if (!p.image) plain += p.text;
                if (m.role == "system") out += "<<SYS>>\n" + plain + "\n<</SYS>>\n\n";
                else if (m.role == "user") out += "[INST] " + images + plain + " [/INST]";
                else out += " " + plain + "</s> ";
                break;
            }
            case ChatTemplate::VicunaV1:
            case ChatTemplate::Llava: {
                std::string plain;  // the text parts, the images first (llava-1.5-hf's template)
                for (const ChatPart& p : m.parts)
                    if (!p.image) plain += p.text;
                if (m.role == "system") out += plain + " ";
                else if (m.role == "user") out += "USER: " + images + plain + " ";
                else out += "ASSISTANT: " + plain + "</s>";
                break;
            }
        }
    }
    if (add_generation_prompt) {
        if (t == ChatTemplate::Llava || t == ChatTemplate::VicunaV1) out += "ASSISTANT:";
        else if (is_chatml(t)) out += "<|im_start|>assistant\n";
        else if (t == ChatTemplate::Gemma3) out += "<start_of_turn>model\n";
        else if (t == ChatTemplate::SmolVLM) out += "Assistant:";
    }
    return out;
}

}  // namespace aircache
