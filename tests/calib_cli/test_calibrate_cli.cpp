// `flatquant calibrate` through the binary: with LibTorch it runs (tiny schedule on stories260K, one line per
// layer, the artifact files); without, it exists and fails with the documented one-line error.
#include <gtest/gtest.h>

#include "core/fs.h"
#include "test_util.h"

namespace fq::test {
namespace {

TEST(CalibrateCli, RunsOrExplainsMissingLibTorch) {
  TempDir tmp;
  const std::string model = source_path(".cache/models/stories260K");
  const std::string data = data_path("wikitext2_raw/wiki.valid.nonempty.first100KB.txt");
#ifndef FQ_HAVE_CALIB
  const CliResult r = run_cli("calibrate --model " + model + " --calib-data " + data + " --out " + tmp.file("a"));
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_EQ(r.err,
            "flatquant: error: flatquant was built without LibTorch (FLATQUANT_TORCH=OFF): calibrate is unavailable\n");
#else
  const CliResult bad = run_cli("calibrate --model " + model + " --calib-data " + data + " --out " + tmp.file("a") +
                                " --set calib.epoch=1");
  EXPECT_EQ(bad.exit_code, 1);
  EXPECT_EQ(bad.err, "flatquant: error: --set calib.epoch: unknown key (known: calib.epochs, calib.nsamples, "
                     "calib.seqlen, calib.bsz, calib.lr, calib.amp, seed)\n");
  FQ_REQUIRE_FILE(model + "/config.json");
  FQ_REQUIRE_FILE(data);
  const CliResult r = run_cli("calibrate --threads 1 --model " + model + " --calib-data " + data + " --out " +
                              tmp.file("a") +
                              " --set calib.epochs=1 --set calib.nsamples=2 --set calib.seqlen=32 --set calib.bsz=2");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.err.find("layer 5/5: loss "), std::string::npos) << r.err;
  EXPECT_TRUE(file_exists(tmp.file("a/transforms.safetensors")));
  EXPECT_TRUE(file_exists(tmp.file("a/manifest.json")));
  EXPECT_TRUE(file_exists(tmp.file("a/calib_log.csv")));
#endif
}

}  // namespace
}  // namespace fq::test
