/* Registers one operator (-DEDGEKIT_OP=CONV_2D) or none, for tools/gen_tflm_code_size.py. */
#define EDGEKIT_CAT2(a, b) a##b
#define EDGEKIT_CAT(a, b) EDGEKIT_CAT2(a, b)

#ifdef EDGEKIT_OP
void EDGEKIT_CAT(edgekit_add_, EDGEKIT_OP)(void* resolver);
void edgekit_add_ops(void* resolver) { EDGEKIT_CAT(edgekit_add_, EDGEKIT_OP)(resolver); }
#else
void edgekit_add_ops(void* resolver) { (void)resolver; }
#endif
