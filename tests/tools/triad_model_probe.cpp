// triad_model_probe: one forward/backward of the model on the first micro-batch of data.train,
// from a checkpoint's weights (in the config's run.precision and run.fp8), dumped to HDF5 for
// comparison with an independent reference (tests/python/test_reference_model.py runs PyTorch on
// the same weights and batch).
//
//   triad_model_probe --config CFG.ini --checkpoint CKPT.h5 --out OUT.h5
//
// OUT.h5: /loss (mean token cross-entropy, float64 scalar as shape [1]), /logits [B, T, V],
// /activations/<name> (train.activations_every's root mean squares, float64 [1]),
// /grad/<parameter name> at the parameter's full shape (wte: [padded_vocab_size, C]; zeros where
// train.freeze leaves a gradient unformed).
#include <hdf5.h>

#include <cmath>
#include <iostream>
#include <vector>

#include "triad/core/error.h"
#include "triad/data/loader.h"
#include "triad/io/checkpoint.h"
#include "triad/kernels/backend.h"
#include "triad/model/gpt.h"
#include "triad/optim/optimizer.h"
#include "triad/train/app_main.h"
#include "triad/train/config.h"
#include "triad/train/model_tensors.h"
#include "triad/train/run_plan.h"

namespace {

void write(hid_t file, const std::string& name, const std::vector<hsize_t>& dims, hid_t type,
           const void* data) {
  hid_t lcpl = H5Pcreate(H5P_LINK_CREATE);
  H5Pset_create_intermediate_group(lcpl, 1);
  hid_t space = H5Screate_simple(int(dims.size()), dims.data(), nullptr);
  hid_t d = H5Dcreate2(file, name.c_str(), type, space, lcpl, H5P_DEFAULT, H5P_DEFAULT);
  TRIAD_CHECK(d >= 0, "cannot create dataset ", name);
  H5Dwrite(d, type, H5S_ALL, H5S_ALL, H5P_DEFAULT, data);
  H5Dclose(d);
  H5Sclose(space);
  H5Pclose(lcpl);
}

}  // namespace

int main(int argc, char** argv) {
  return triad::run_main(argc, argv, "triad_model_probe", [&](MPI_Comm world) {
    std::string cfg_path, ckpt, out;
    for (int i = 1; i + 1 < argc; i += 2) {
      const std::string k = argv[i];
      if (k == "--config")
        cfg_path = argv[i + 1];
      else if (k == "--checkpoint")
        ckpt = argv[i + 1];
      else if (k == "--out")
        out = argv[i + 1];
      else
        triad::fail("unknown option ", k);
    }
    TRIAD_CHECK(!cfg_path.empty() && !ckpt.empty() && !out.empty(),
                "usage: triad_model_probe --config CFG --checkpoint CKPT --out OUT.h5");
    const char* args[] = {"probe", "--config", cfg_path.c_str()};
    const triad::Config cfg = triad::parse_train_command_line(3, args).config;
    triad::validate(cfg, 1);
    const int B = cfg.train.micro_batch_size, T = cfg.model.seq_len, V = cfg.model.vocab_size;
    const triad::GptShape shape = triad::gpt_shape(cfg);
    auto be = triad::make_cpu_backend();
    triad::Gpt model(shape, B, *be, 1, {}, nullptr,
                     cfg.bf16() ? triad::Precision::bf16 : triad::Precision::fp32,
                     triad::activation_options(cfg));
    model.set_fp8(
        cfg.run.fp8 != "off",
        [&](const std::string& name) { return triad::frozen_tensor(cfg.run.fp8_skip, name); },
        cfg.run.fp8_head);
    model.set_mtp_weight(float(cfg.train.mtp_loss_weight));  // model.mtp_depth's losses
    if (!cfg.train.freeze.empty())  // train.freeze: their gradient products left out
      model.set_frozen(
          [&](const std::string& name) { return triad::frozen_tensor(cfg.train.freeze, name); });
    std::vector<triad::TensorRef> refs;
    for (const auto& p : model.specs()) {
      triad::TensorRef r{p.name, p.shape, model.params() + p.offset, -1};
      if (triad::has_vocabulary_rows(p.name)) r.valid_rows = V;
      refs.push_back(std::move(r));
    }
    triad::load_checkpoint_tensors(world, ckpt, {{"model", refs}});
    triad::load_router_bias(world, ckpt, model);  // they choose the experts as in training
    model.params_updated();  // the bf16 copy the layers read (run.precision = bf16)
    triad::SequenceSource src(cfg.data.train, "data.train", T, V);
    std::vector<int32_t> in(size_t(B) * T), tg(size_t(B) * T);
    for (int b = 0; b < B; ++b) src.read(b, in.data() + size_t(b) * T, tg.data() + size_t(b) * T);
    std::vector<float> logits(size_t(B) * T * V);
    model.forward_logits(in.data(), B, logits.data());
    // train.activations_every's root mean squares, from a forward pass of the same batch.
    const std::vector<std::string> act_names = triad::Gpt::activation_names(shape.n_layer);
    std::vector<double> act(act_names.size(), 0.0);
    model.set_activation_sums(act.data());
    (void)model.evaluate(in.data(), tg.data(), B);
    model.set_activation_sums(nullptr);
    for (double& s : act) s = std::sqrt(s / (double(B) * T * shape.n_embd));
    model.zero_grads();
    // train.hidden_dropout: the masks of the data's first sequences, as the first step's
    model.set_dropout_sequence(uint64_t(cfg.train.seed), 0);
    const auto st = model.forward_backward(in.data(), tg.data(), B, 1.0f / float(B * T));
    const double loss = st.loss_sum / double(st.tokens);
    hid_t f = H5Fcreate(out.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    TRIAD_CHECK(f >= 0, "cannot create ", out);
    write(f, "loss", {1}, H5T_NATIVE_DOUBLE, &loss);
    write(f, "logits", {hsize_t(B), hsize_t(T), hsize_t(V)}, H5T_NATIVE_FLOAT, logits.data());
    for (size_t k = 0; k < act.size(); ++k)
      write(f, "activations/" + act_names[k], {1}, H5T_NATIVE_DOUBLE, &act[k]);
    for (const auto& p : model.specs()) {
      std::vector<hsize_t> dims(p.shape.begin(), p.shape.end());
      write(f, "grad/" + p.name, dims, H5T_NATIVE_FLOAT, model.grads() + p.offset);
    }
    H5Fclose(f);
    std::cout << "loss " << loss << "\n";
    return 0;
  });
}
