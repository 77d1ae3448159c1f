// chat.h — built-in chat templates (no Jinja engine): the prompt text around the user's message.
//
//   ChatTemplate t = chat_template_for(gguf_jinja_or_empty, override_name);
//   std::string text = apply_chat_template(t, "What is on the table?", n_images);
//
// Families: `llava` (LLaVA-1.5 / vicuna style: "USER: <image>\n{prompt} ASSISTANT:"), `chatml`
// ("<|im_start|>user\n...<|im_end|>\n<|im_start|>assistant\n"), `qwen2-vl` (ChatML with Qwen2-VL's
// default system message "You are a helpful assistant." and each image as
// "<|vision_start|><image><|vision_end|>" where its part is, no newline; Qwen2.5-VL's too),
// `qwen3-vl` (the same without a default system message), `gemma3` ("<start_of_turn>user\n...
// <end_of_turn>\n<start_of_turn>model\n", the assistant as "model", a system message's text before
// the first user turn's, text parts trimmed, each image as "\n\n<start_of_image><image><end_of_image>\n\n"
// as HF's Gemma3Processor expands it), `smolvlm` (SmolVLM2's: "<|im_start|>" once, then per message
// "{Role}:" — ": " when its first part is text — its parts, images as "<image>", and
// "<end_of_utterance>\n"; the generation prompt "Assistant:"), `internvl` (InternVL 2.5 / 3's
// "internvl2_5" conversation: ChatML with InternVL's default system message, each image as "<image>\n"
// where its part is, the question after; the processor writes the image as "<img>...</img>"), `none`
// (the prompt as is). A file's
// `llava-next-mistral` (llava-v1.6-mistral-7b-hf's: "[INST] " + images "<image>\n" + text + " [/INST]",
// a system message as "<<SYS>>\n...\n<</SYS>>\n\n", an answer as " {text}</s> "; a file whose template
// has "[INST]" gets it), `vicuna-v1` (LLaVA's conv_vicuna_v1, the llava-v1.6-vicuna model card's
// prompt: `llava` with the default system message "A chat between a curious human and an artificial
// intelligence assistant. ..."; llava-v1.6-vicuna-7b-hf's own chat template is `llava`). A file's
// tokenizer.chat_template is recognised by substring as llama.cpp does; without one the default is
// `llava`. Images are placed with the marker "<image>" (llama.cpp's "<__media__>" is accepted too):
// when the prompt has no markers, one per image is put at the start of the user message.
#pragma once

#include <string>
#include <vector>

namespace aircache {

enum class ChatTemplate { None, Llava, ChatML, Qwen2VL, Qwen3VL, Gemma3, SmolVLM, LlavaNextMistral, VicunaV1, InternVL };

extern const char* const kImageMarker;       // "<image>"
extern const char* const kImageMarkerAlt;    // "<__media__>"

const char* chat_template_name(ChatTemplate t);
std::vector<std::string> chat_template_names();  // {"llava", "chatml", "none"}
// name: "" or "auto" to detect from `jinja` (the GGUF's tokenizer.chat_template, may be empty).
// InputError for an unknown name (listing the valid ones).
ChatTemplate chat_template_for(const std::string& jinja, const std::string& name);

// The full prompt text with image markers placed. InputError when the prompt holds a different
// number of markers than there are images.
std::string apply_chat_template(ChatTemplate t, const std::string& prompt, int n_images);

// A message of a conversation (OpenAI-style): role "system", "user" or "assistant"; parts of text and
// images (an image part becomes an image marker where the template puts it).
struct ChatPart {
    bool image = false;
    std::string text;
};
struct ChatMessage {
    std::string role;
    std::vector<ChatPart> parts;
};

// The conversation through a built-in template, image parts as "<image>" markers:
//   llava:  "{system} " then "USER: " + images ("<image>\n" each, first) + text + " " per user
//           message, "ASSISTANT: " + text + "</s>" per assistant message; the generation prompt
//           "ASSISTANT:" (llava-1.5-hf's template; one user message gives apply_chat_template's text)
//   chatml: "<|im_start|>{role}\n{content}<|im_end|>\n" per message (images where their parts are);
//           the generation prompt "<|im_start|>assistant\n"
//   internvl: chatml with "<|im_start|>system\n{InternVL's system message}<|im_end|>\n" first when the
//           first message is not a system message, each image part as "<image>\n"
//   smolvlm: "<|im_start|>" (not on a continuation), then "{Role}:" or "{Role}: " (the first part
//           an image or not) + parts + "<end_of_utterance>\n" per message, roles capitalized; the
//           generation prompt "Assistant:" (SmolVLM2's template)
//   none:   the parts' texts (images as markers) concatenated
// InputError for an unknown role or a system message after the first.
// continuation: the messages continue a conversation already rendered (no default system message).
std::string render_chat(ChatTemplate t, const std::vector<ChatMessage>& messages, bool add_generation_prompt,
                        bool continuation = false);
// What closes an assistant message in `t` ("</s>", "<|im_end|>\n", "").
std::string chat_assistant_end(ChatTemplate t);

// Splits text at image markers: pieces.size() == markers + 1.
std::vector<std::string> split_at_image_markers(const std::string& text);

}  // namespace aircache
