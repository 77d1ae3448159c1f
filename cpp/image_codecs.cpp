// image_codecs.cpp — PNG (libpng) and JPEG (libjpeg) decoding to RGB, each compiled in when CMake
// found the library (AIRCACHE_HAVE_PNG / AIRCACHE_HAVE_JPEG).
//
// Both libraries report errors by longjmp. Each decoder keeps its library calls inside one small
// function that calls setjmp and owns no C++ objects with destructors; the handles, buffers and
// the error text live in structs owned by the caller, so a longjmp skips nothing that needs
// cleaning up and the caller turns the failure into an exception.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <csetjmp>
#include <cstdio>
#include <cstring>

#include "common.h"
#include "image.h"

#if defined(AIRCACHE_HAVE_PNG)
#include <png.h>
#endif
#if defined(AIRCACHE_HAVE_JPEG)
// clang-format off
#include <jpeglib.h>
#include <jerror.h>
// clang-format on
#endif

namespace aircache {

std::vector<std::string> image_formats() {
    std::vector<std::string> v;
#if defined(AIRCACHE_HAVE_PNG)
    v.push_back("png");
#endif
#if defined(AIRCACHE_HAVE_JPEG)
    v.push_back("jpeg");
#endif
    return v;
}

namespace {

std::string formats_text() {
    std::string s;
    for (const std::string& f : image_formats()) s += (s.empty() ? "" : ", ") + f;
    return s.empty() ? "none (built without libpng and libjpeg)" : s;
}

[[noreturn, maybe_unused]] void not_built(const std::string& name, const char* format, const char* library) {
    throw UnsupportedError(strprintf("%s: a %s image, but this build of aircache was made without %s; it reads: %s",
                                     name.c_str(), format, library, formats_text().c_str()));
}

// Pixels interleaved with 1, 3 or 4 channels become RGB (gray replicated, alpha on white).
[[maybe_unused]] Image to_rgb(const std::vector<uint8_t>& px, int width, int height, int channels) {
    return image_from_pixels(px.data(), height, width, channels);
}

#if defined(AIRCACHE_HAVE_PNG)
// ---------------------------------------------------------------------------------------------
// PNG
// ---------------------------------------------------------------------------------------------

struct PngState {
    const uint8_t* data = nullptr;
    size_t size = 0, pos = 0;
    char error[200] = {0};
    int width = 0, height = 0, channels = 0;
    std::vector<uint8_t> pixels;
    std::vector<png_bytep> rows;
};

struct PngHandle {
    png_structp png = nullptr;
    png_infop info = nullptr;
    ~PngHandle() {
        if (png) png_destroy_read_struct(&png, info ? &info : nullptr, nullptr);
    }
};

void png_on_error(png_structp png, png_const_charp msg) {
    auto* st = static_cast<PngState*>(png_get_error_ptr(png));
    std::snprintf(st->error, sizeof st->error, "%s", msg ? msg : "unknown error");
    png_longjmp(png, 1);
}

void png_on_warning(png_structp, png_const_charp) {}  // benign problems (bad ancillary chunks)

void png_read_memory(png_structp png, png_bytep out, size_t n) {
    auto* st = static_cast<PngState*>(png_get_io_ptr(png));
    if (n > st->size - st->pos) png_error(png, "the file is truncated");
    std::memcpy(out, st->data + st->pos, n);
    st->pos += n;
}

// Library calls only; false (with st.error set) when libpng reported an error.
bool png_decode_steps(PngHandle& h, PngState& st) {
    if (setjmp(png_jmpbuf(h.png))) return false;
    png_set_read_fn(h.png, &st, png_read_memory);
    png_read_info(h.png, h.info);
    png_uint_32 w = 0, hgt = 0;
    int depth = 0, color = 0, interlace = 0;
    png_get_IHDR(h.png, h.info, &w, &hgt, &depth, &color, &interlace, nullptr, nullptr);
    if (static_cast<int64_t>(w) * hgt > kMaxImagePixels) {
        std::snprintf(st.error, sizeof st.error, "%ux%u pixels is larger than the limit of %lld pixels", w, hgt,
                      static_cast<long long>(kMaxImagePixels));
        return false;
    }
    // Everything to 8-bit RGB or RGBA. The 16-bit samples keep their high byte (what Pillow does
    // for 16-bit RGB, RGBA and LA); tRNS becomes an alpha channel, as the PNG spec defines it.
    if (color == PNG_COLOR_TYPE_PALETTE) png_set_palette_to_rgb(h.png);
    if ((color == PNG_COLOR_TYPE_GRAY || color == PNG_COLOR_TYPE_GRAY_ALPHA) && depth < 8)
        png_set_expand_gray_1_2_4_to_8(h.png);
    if (png_get_valid(h.png, h.info, PNG_INFO_tRNS)) png_set_tRNS_to_alpha(h.png);
    if (depth == 16) png_set_strip_16(h.png);
    if (color == PNG_COLOR_TYPE_GRAY || color == PNG_COLOR_TYPE_GRAY_ALPHA) png_set_gray_to_rgb(h.png);
    png_set_interlace_handling(h.png);
    png_read_update_info(h.png, h.info);

    const int channels = png_get_channels(h.png, h.info);
    if ((channels != 3 && channels != 4) || png_get_rowbytes(h.png, h.info) != static_cast<size_t>(w) * channels) {
        std::snprintf(st.error, sizeof st.error, "unexpected layout after expansion (%d channels)", channels);
        return false;
    }
    st.width = static_cast<int>(w);
    st.height = static_cast<int>(hgt);
    st.channels = channels;
    st.pixels.resize(static_cast<size_t>(w) * hgt * channels);
    st.rows.resize(hgt);
    for (png_uint_32 y = 0; y < hgt; ++y) st.rows[y] = st.pixels.data() + static_cast<size_t>(y) * w * channels;
    png_read_image(h.png, st.rows.data());
    // The chunks after the image data (IEND, text) are not read: an image whose pixels are all
    // present is accepted even if the end of the file is missing.
    return true;
}

Image decode_png(const uint8_t* data, size_t size, const std::string& name) {
    PngState st;
    st.data = data;
    st.size = size;
    PngHandle h;
    h.png = png_create_read_struct(PNG_LIBPNG_VER_STRING, &st, png_on_error, png_on_warning);
    if (h.png) h.info = png_create_info_struct(h.png);
    if (!h.png || !h.info) throw OutOfMemory("libpng could not allocate its decoder state");
    if (!png_decode_steps(h, st)) throw FormatError(name + ": corrupt PNG: " + st.error);
    return to_rgb(st.pixels, st.width, st.height, st.channels);
}
#endif  // AIRCACHE_HAVE_PNG

#if defined(AIRCACHE_HAVE_JPEG)
// ---------------------------------------------------------------------------------------------
// JPEG
// ---------------------------------------------------------------------------------------------

struct JpegError {
    jpeg_error_mgr pub;
    jmp_buf jump;
    char message[JMSG_LENGTH_MAX + 80];
};

struct JpegHandle {
    jpeg_decompress_struct cinfo;
    JpegError err;
    bool created = false;
    ~JpegHandle() {
        if (created) jpeg_destroy_decompress(&cinfo);
    }
};

void jpeg_on_error(j_common_ptr cinfo) {
    auto* e = reinterpret_cast<JpegError*>(cinfo->err);
    char buf[JMSG_LENGTH_MAX];
    (*cinfo->err->format_message)(cinfo, buf);
    std::snprintf(e->message, sizeof e->message, "%s", buf);
    longjmp(e->jump, 1);
}

// Warnings are ignored (libjpeg recovers from corrupt entropy data as Pillow does), except
// running out of data: libjpeg would pad the image with grey, Pillow reports a truncated file.
void jpeg_on_message(j_common_ptr cinfo, int level) {
    if (level == -1 && cinfo->err->msg_code == JWRN_JPEG_EOF) {
        auto* e = reinterpret_cast<JpegError*>(cinfo->err);
        std::snprintf(e->message, sizeof e->message, "the file is truncated (premature end of JPEG data)");
        longjmp(e->jump, 1);
    }
}

void jpeg_no_output(j_common_ptr) {}

struct JpegOut {
    int width = 0, height = 0, channels = 0;
    bool cmyk = false;
    std::vector<uint8_t> pixels;
};

bool jpeg_decode_steps(JpegHandle& h, const uint8_t* data, size_t size, JpegOut& out) {
    h.cinfo.err = jpeg_std_error(&h.err.pub);
    h.err.pub.error_exit = jpeg_on_error;
    h.err.pub.emit_message = jpeg_on_message;
    h.err.pub.output_message = jpeg_no_output;
    h.err.message[0] = 0;
    if (setjmp(h.err.jump)) return false;
    jpeg_create_decompress(&h.cinfo);
    h.created = true;
    jpeg_mem_src(&h.cinfo, data, static_cast<unsigned long>(size));
    jpeg_read_header(&h.cinfo, TRUE);
    const int64_t w = h.cinfo.image_width, hgt = h.cinfo.image_height;
    if (w * hgt > kMaxImagePixels) {
        std::snprintf(h.err.message, sizeof h.err.message, "%lldx%lld pixels is larger than the limit of %lld pixels",
                      static_cast<long long>(w), static_cast<long long>(hgt), static_cast<long long>(kMaxImagePixels));
        return false;
    }
    // Pillow's choices: gray stays gray, 3 components become RGB, 4 components are read as CMYK
    // (YCCK converted by libjpeg); libjpeg's defaults otherwise (ISLOW DCT, fancy upsampling).
    switch (h.cinfo.num_components) {
        case 1: h.cinfo.out_color_space = JCS_GRAYSCALE; break;
        case 3: h.cinfo.out_color_space = JCS_RGB; break;
        case 4: h.cinfo.out_color_space = JCS_CMYK; out.cmyk = true; break;
        default:
            std::snprintf(h.err.message, sizeof h.err.message, "%d colour components (expected 1, 3 or 4)",
                          h.cinfo.num_components);
            return false;
    }
    jpeg_start_decompress(&h.cinfo);
    out.width = static_cast<int>(h.cinfo.output_width);
    out.height = static_cast<int>(h.cinfo.output_height);
    out.channels = h.cinfo.output_components;
    if (out.channels != (h.cinfo.num_components == 1 ? 1 : h.cinfo.num_components == 3 ? 3 : 4)) {
        std::snprintf(h.err.message, sizeof h.err.message, "unexpected output layout (%d components)", out.channels);
        return false;
    }
    const size_t row = static_cast<size_t>(out.width) * out.channels;
    out.pixels.resize(row * out.height);
    while (h.cinfo.output_scanline < h.cinfo.output_height) {
        JSAMPROW r = out.pixels.data() + row * h.cinfo.output_scanline;
        if (jpeg_read_scanlines(&h.cinfo, &r, 1) != 1) {
            std::snprintf(h.err.message, sizeof h.err.message, "the decoder stopped at row %u",
                          h.cinfo.output_scanline);
            return false;
        }
    }
    // Not jpeg_finish_decompress: what follows the last scanline does not change the pixels.
    return true;
}

Image decode_jpeg(const uint8_t* data, size_t size, const std::string& name) {
    JpegHandle h;
    JpegOut out;
    if (!jpeg_decode_steps(h, data, size, out)) throw FormatError(name + ": corrupt JPEG: " + h.err.message);
    if (out.cmyk) {
        // Pillow reads every CMYK JPEG as Adobe-inverted (rawmode "CMYK;I": C = 255 - stored) and
        // converts with nk = 255 - K, R = nk - round(C * nk / 255) in its integer MULDIV255; so
        // nk is the stored k.
        const size_t n = static_cast<size_t>(out.width) * out.height;
        std::vector<uint8_t> rgb(n * 3);
        for (size_t i = 0; i < n; ++i) {
            const uint8_t* p = &out.pixels[i * 4];
            const int nk = p[3];  // 255 - (255 - stored k)
            for (int c = 0; c < 3; ++c) {
                const int C = 255 - p[c];
                const int t = C * nk + 128;
                const int v = nk - (((t >> 8) + t) >> 8);
                rgb[i * 3 + c] = static_cast<uint8_t>(v < 0 ? 0 : (v > 255 ? 255 : v));
            }
        }
        return to_rgb(rgb, out.width, out.height, 3);
    }
    return to_rgb(out.pixels, out.width, out.height, out.channels);
}
#endif  // AIRCACHE_HAVE_JPEG

bool starts_with(const uint8_t* data, size_t size, const char* sig, size_t n, size_t at = 0) {
    return size >= at + n && std::memcmp(data + at, sig, n) == 0;
}

// Other image formats, recognised to say so in the message.
const char* other_format(const uint8_t* d, size_t n) {
    if (starts_with(d, n, "GIF87a", 6) || starts_with(d, n, "GIF89a", 6)) return "GIF";
    if (starts_with(d, n, "RIFF", 4) && starts_with(d, n, "WEBP", 4, 8)) return "WebP";
    if (starts_with(d, n, "BM", 2)) return "BMP";
    if (starts_with(d, n, "II*\0", 4) || starts_with(d, n, "MM\0*", 4)) return "TIFF";
    if (starts_with(d, n, "ftypavif", 8, 4)) return "AVIF";
    if (starts_with(d, n, "ftypheic", 8, 4) || starts_with(d, n, "ftypmif1", 8, 4)) return "HEIF";
    if (starts_with(d, n, "qoif", 4)) return "QOI";
    return nullptr;
}

}  // namespace

Image decode_image(const uint8_t* data, size_t size, const std::string& name) {
    if (size == 0) throw FormatError(name + ": empty file (0 bytes), not a PNG or JPEG image");
    if (starts_with(data, size, "\x89PNG\r\n\x1a\n", 8)) {
#if defined(AIRCACHE_HAVE_PNG)
        return decode_png(data, size, name);
#else
        not_built(name, "PNG", "libpng");
#endif
    }
    if (starts_with(data, size, "\xff\xd8\xff", 3)) {
#if defined(AIRCACHE_HAVE_JPEG)
        return decode_jpeg(data, size, name);
#else
        not_built(name, "JPEG", "libjpeg");
#endif
    }
    if (const char* other = other_format(data, size))
        throw UnsupportedError(strprintf("%s: %s images are not supported; this build reads: %s", name.c_str(), other,
                                         formats_text().c_str()));
    throw FormatError(name + ": not a PNG or JPEG image (unknown signature " +
                      printable(std::string_view(reinterpret_cast<const char*>(data), size < 8 ? size : 8)) + ")");
}

Image load_image_file(const std::string& path) {
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        const int e = errno;
        throw IOError(e, path, strprintf("cannot open '%s': %s", path.c_str(), std::strerror(e)));
    }
    struct Closer {
        int fd;
        ~Closer() { ::close(fd); }
    } closer{fd};
    struct stat st;
    if (fstat(fd, &st) != 0) {
        const int e = errno;
        throw IOError(e, path, strprintf("cannot stat '%s': %s", path.c_str(), std::strerror(e)));
    }
    if (S_ISDIR(st.st_mode)) throw IOError(EISDIR, path, strprintf("cannot open '%s': it is a directory", path.c_str()));
    std::vector<uint8_t> bytes;
    if (S_ISREG(st.st_mode)) bytes.reserve(static_cast<size_t>(st.st_size));
    uint8_t buf[1 << 16];
    for (;;) {
        const ssize_t n = ::read(fd, buf, sizeof buf);
        if (n < 0) {
            const int e = errno;
            if (e == EINTR) continue;
            throw IOError(e, path, strprintf("cannot read '%s': %s", path.c_str(), std::strerror(e)));
        }
        if (n == 0) break;
        bytes.insert(bytes.end(), buf, buf + n);
    }
    return decode_image(bytes.data(), bytes.size(), path);
}

}  // namespace aircache
