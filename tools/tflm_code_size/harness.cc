// The smallest program that runs a model with TFLM, for measuring code size (tools/gen_tflm_code_size.py).
// It does what every TFLM firmware does - register operators, read a model, build a MicroInterpreter,
// allocate and invoke - so that the linker (--gc-sections) keeps exactly the interpreter's code, plus the
// kernels of the operators that edgekit_add_ops() registers (add_ops.c, built once per operator).
#include <stddef.h>
#include <stdint.h>

#include <new>

#include "tensorflow/lite/micro/cortex_m_generic/debug_log_callback.h"
#include "tensorflow/lite/micro/micro_interpreter.h"
#include "tensorflow/lite/micro/micro_mutable_op_resolver.h"

namespace {
using Resolver = tflite::MicroMutableOpResolver<1>;
// model and arena in RAM: neither counts as code, and the compiler cannot fold the run away
alignas(16) uint8_t g_model[64];
alignas(16) uint8_t g_arena[1024];
alignas(Resolver) uint8_t g_resolver[sizeof(Resolver)];
void Log(const char*) {}
}  // namespace

// One registration function per resolver method (ops.inc: EDGEKIT_OP(CONV_2D, AddConv2D) lines, read
// from the checkout's micro_mutable_op_resolver.h); only the one add_ops.c calls survives --gc-sections.
#define EDGEKIT_OP(op, method) \
  extern "C" void edgekit_add_##op(void* r) { static_cast<Resolver*>(r)->method(); }
#include "ops.inc"

extern "C" void edgekit_add_ops(void* resolver);

int main() {
  RegisterDebugLogCallback(Log);
  Resolver* resolver = new (g_resolver) Resolver();
  edgekit_add_ops(resolver);
  const tflite::Model* model = tflite::GetModel(g_model);
  tflite::MicroInterpreter interpreter(model, *resolver, g_arena, sizeof(g_arena));
  if (interpreter.AllocateTensors() != kTfLiteOk) return 1;
  return interpreter.Invoke() == kTfLiteOk ? 0 : 2;
}
