/* The start-up code and C library set-up alone: what every program has before TFLM (gen_tflm_code_size.py). */
int main(void) { return 0; }
