// One-line JSON with spaced separators; see json.h.
#include "io/json.h"

namespace anyk::io {

namespace {

void append(std::string& out, const Json& j) {
  if (j.is_object()) {
    out += '{';
    bool first = true;
    for (const auto& [key, value] : j.items()) {
      out += first ? "" : ", ";
      first = false;
      out += Json(key).dump();
      out += ": ";
      append(out, value);
    }
    out += '}';
  } else if (j.is_array()) {
    out += '[';
    for (size_t i = 0; i < j.size(); ++i) {
      out += i ? ", " : "";
      append(out, j[i]);
    }
    out += ']';
  } else {
    out += j.dump(-1, ' ', false, nlohmann::detail::error_handler_t::replace);
  }
}

}  // namespace

std::string json_text(const Json& j) {
  std::string out;
  append(out, j);
  return out;
}

}  // namespace anyk::io
