// load_image_tokenizer: the model file says which tokenizer it holds (config "stage1" "type");
// nothing is guessed from tensor names.
#include "nn/image_tokenizer.h"

#include <nlohmann/json.hpp>

#include "nn/stage1_config.h"
#include "rq/rqvae.h"
#include "vqgan/vqgan.h"

namespace hwaga {

std::unique_ptr<ImageTokenizer> load_image_tokenizer(const SafetensorsFile& file, Backend& backend) {
  auto it = file.metadata.find("config");
  if (it == file.metadata.end()) fail(file.path, ": metadata has no \"config\" entry");
  nlohmann::json config;
  try {
    config = nlohmann::json::parse(it->second);
  } catch (const nlohmann::json::exception& e) {
    fail(file.path, ": metadata \"config\" is not valid JSON: ", e.what());
  }
  if (!config.is_object() || !config.contains("stage1"))
    fail(file.path, ": metadata \"config\" has no \"stage1\" entry (this file holds no image tokenizer)");
  const Stage1Config cfg = stage1_config_from_json(config["stage1"], file.path + ": config.stage1");
  std::vector<TensorSpec> specs = stage1_tensor_specs(cfg);
  for (TensorSpec& s : specs) s.name = "stage1." + s.name;
  check_tensors(file.tensors, specs, "stage1.", file.path);
  if (cfg.is_rq()) return std::make_unique<RQVAE>(cfg, file.tensors, file.path, backend);
  return std::make_unique<VQGAN>(cfg, file.tensors, file.path, backend);
}

}  // namespace hwaga
