// ModelConfig checks and parameter counts.
#include "model/config.h"

#include <sstream>

namespace anyk {

void ModelConfig::validate() const {
  ANYK_CHECK(vocab >= 2, "vocab " << vocab << " must be >= 2");
  ANYK_CHECK(dim >= 2 && layers >= 1 && heads >= 1 && experts >= 1 && expert_hidden >= 1 &&
                 seq_len >= 1,
             "model sizes must be positive (dim " << dim << ", layers " << layers << ", heads "
                                                  << heads << ", experts " << experts
                                                  << ", expert hidden " << expert_hidden
                                                  << ", seq len " << seq_len << ")");
  ANYK_CHECK(dim % heads == 0, "--dim " << dim << " is not divisible by --heads " << heads
                                        << ". hint: pick heads that divide dim");
  ANYK_CHECK((dim / heads) % 2 == 0, "head dim " << dim / heads
                                                 << " must be even for RoPE. hint: change --dim or --heads");
  ANYK_CHECK(router.lb_coef >= 0 && router.z_coef >= 0 && router.kl_coef >= 0,
             "router loss coefficients must be >= 0");
}

int64_t ModelConfig::num_params() const {
  int64_t C = dim, H = expert_hidden;
  int64_t per_layer = 2 * C + 3 * C * C + C * C + experts * C + experts * 3 * H * C;
  return vocab * C + C + layers * per_layer;
}

int64_t ModelConfig::active_params(double k) const {
  double C = dim, H = expert_hidden;
  double per_layer = 3 * C * C + C * C + experts * C + k * 3 * H * C;
  return int64_t(vocab * C + layers * per_layer);
}

std::string ModelConfig::summary() const {
  std::ostringstream os;
  os << "L=" << layers << " C=" << dim << " NH=" << heads << " E=" << experts << " H=" << expert_hidden
     << " T=" << seq_len << " V=" << vocab << " params=" << num_params();
  return os.str();
}

}  // namespace anyk
